//! A synthetic snapshot shaped like a large install, shared by the benches: experiments, users,
//! teams, instance types, one extra label (8 estimators), quality metrics on most finished runs and
//! GPU utilization on GPU runs, drawn from a fixed seed so every run measures the same data.

use mlflow_exporter::sync::snapshot::*;

pub const DAY_MS: i64 = 86_400_000;
pub const NOW_MS: i64 = 1_800_000_000_000;

/// `runs` runs over `experiments` experiments, 2 000 users, 20 teams, 12 instance types, 90 days.
pub fn snapshot(runs: usize, experiments: usize) -> Snapshot {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut snap = Snapshot::default();
    let s = &mut snap.strings;
    let teams: Vec<Sym> = (0..20).map(|i| s.intern(&format!("team-{i}"))).collect();
    let types: Vec<Sym> = (0..12)
        .map(|i| s.intern(&format!("g5.{i}xlarge")))
        .collect();
    let users: Vec<Sym> = (0..2_000)
        .map(|i| s.intern(&format!("user{i}@example.com")))
        .collect();
    let estimators: Vec<u32> = (0..8)
        .map(|i| {
            let e = s.intern(&format!("Estimator{i}"));
            s.intern_combo(&[Some(e)])
        })
        .collect();
    let mut exp_ids = Vec::with_capacity(experiments);
    for i in 0..experiments {
        let id = s.intern(&(i + 1).to_string());
        let rec = ExperimentRecord {
            name: s.intern(&format!("project-{i}/training")),
            deleted: i % 50 == 49,
            team: Some(teams[i % teams.len()]),
            workspace: None,
        };
        snap.experiments.insert(id, rec);
        exp_ids.push(id);
    }
    let statuses = [
        RunStatus::Finished,
        RunStatus::Finished,
        RunStatus::Finished,
        RunStatus::Failed,
        RunStatus::Killed,
        RunStatus::Running,
    ];
    // No reserve: the sync grows the run table as pages arrive, then trims it.
    for i in 0..runs {
        let status = statuses[rng.usize(..statuses.len())];
        let start = NOW_MS - rng.i64(0..90 * DAY_MS);
        let end = if status.is_ended() {
            start + rng.i64(1_000..12 * 3_600_000)
        } else {
            NO_TIME
        };
        let gpus = rng.u16(0..3);
        let quality: Box<[f64]> = if status == RunStatus::Finished && rng.u8(..10) < 6 {
            // accuracy and loss of the default keys (accuracy, auc, f1, rmse, loss).
            Box::new([rng.f64(), f64::NAN, f64::NAN, f64::NAN, rng.f64()])
        } else {
            Box::new([])
        };
        let rec = RunRecord {
            start_ms: start,
            end_ms: end,
            experiment: exp_ids[rng.usize(..exp_ids.len())],
            user: Some(users[rng.usize(..users.len())]),
            team: (i % 7 == 0).then(|| teams[rng.usize(..teams.len())]),
            instance_type: (i % 3 != 0).then(|| types[rng.usize(..types.len())]),
            extra: estimators[rng.usize(..estimators.len())],
            quality,
            gpu_util_pct: if gpus > 0 {
                rng.f64() * 100.0
            } else {
                f64::NAN
            },
            features: rng.u32(..64),
            rate: if i % 3 == 0 { NO_RATE } else { rng.u16(0..4) },
            gpus_logged: gpus,
            status,
            deleted: i % 40 == 0,
            hashed_id: false,
            counted_ms: 0,
            counted: 0,
        };
        snap.runs.insert(rng.u128(..), rec);
    }
    snap.runs.shrink_to_fit();
    snap
}
