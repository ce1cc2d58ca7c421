//! A synthetic large install for the series budget (benches/derive.rs and
//! tests/it/series_budget.rs): runs, experiments, teams, instance types and a registry shaped like
//! the real-MLflow bench's store (benches/baseline/load_mlflow.py), and a month of delivery history
//! on it, from a fixed seed.

use mlflow_exporter::sync::snapshot::*;

pub const DAY_MS: i64 = 86_400_000;
/// The reference time of the install (the same as `common::NOW_MS`).
pub const NOW_MS: i64 = 1_800_000_000_000;

/// Serving aliases of the synthetic registry, as the default `delivery.serving_aliases` names them.
pub const SERVING: [&str; 3] = ["champion", "production", "prod"];

/// A large install as a platform team runs it, shaped like the real-MLflow bench's store
/// (benches/baseline/load_mlflow.py): `runs` runs over 200 experiments of 20 teams, 2 000 users,
/// most runs tagged with one of 20 teams and one of 12 instance types (the GPU ones logging
/// utilization), 63 running; 500 registered models of 10 versions each (made from finished runs),
/// each with a `champion`, half with a `challenger`, one in five with a `production` alias, and a
/// version in the legacy `Production` stage for about a third: some 770 serving targets.
pub fn install(runs: usize) -> Snapshot {
    const EXPERIMENTS: usize = 200;
    const TEAMS: usize = 20;
    const MODELS: usize = 500;
    const VERSIONS: u32 = 10;
    const TYPES: [&str; 12] = [
        "m5.large",
        "m5.xlarge",
        "m5.2xlarge",
        "c5.4xlarge",
        "r5.2xlarge",
        "g4dn.xlarge",
        "g5.xlarge",
        "g5.2xlarge",
        "g5.12xlarge",
        "p3.2xlarge",
        "p4d.24xlarge",
        "trn1.32xlarge",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    let mut snap = Snapshot::default();
    let s = &mut snap.strings;
    let teams: Vec<Sym> = (0..TEAMS).map(|i| s.intern(&format!("team-{i}"))).collect();
    let types: Vec<Sym> = TYPES.iter().map(|t| s.intern(t)).collect();
    let users: Vec<Sym> = (0..2_000)
        .map(|i| s.intern(&format!("user{i}@example.com")))
        .collect();
    let no_extra = s.intern_combo(&[]);
    let exp_ids: Vec<Sym> = (0..EXPERIMENTS)
        .map(|e| {
            let id = s.intern(&(e + 1).to_string());
            let rec = ExperimentRecord {
                name: s.intern(&format!(
                    "/Users/user{}@example.com/project-{e}/training",
                    e * 7
                )),
                deleted: e % 50 == 49,
                team: Some(teams[e % TEAMS]),
                workspace: None,
            };
            snap.experiments.insert(id, rec);
            id
        })
        .collect();
    let span = 90 * DAY_MS;
    let step = span / runs as i64;
    let (lo, hi) = ((30_000f64).ln(), (6.0 * 3_600_000f64).ln());
    let mut finished = Vec::new();
    let mut running = 0;
    for i in 0..runs {
        let start = NOW_MS - span + i as i64 * step + rng.i64(0..step);
        let dur = (lo + rng.f64() * (hi - lo)).exp() as i64;
        let (status, end) = if start + dur > NOW_MS && running < 63 {
            running += 1;
            (RunStatus::Running, NO_TIME)
        } else {
            let end = (start + dur).min(NOW_MS - 1);
            match rng.u8(0..100) {
                0..80 => (RunStatus::Finished, end),
                80..93 => (RunStatus::Failed, end),
                _ => (RunStatus::Killed, end),
            }
        };
        let itype = rng.usize(0..TYPES.len());
        let gpu = TYPES[itype].starts_with(['g', 'p']);
        let quality: Box<[f64]> = if status == RunStatus::Finished {
            Box::new([rng.f64(), f64::NAN, f64::NAN, f64::NAN, rng.f64() * 3.0])
        } else {
            Box::new([])
        };
        let key = rng.u128(..);
        if status == RunStatus::Finished {
            finished.push(key);
        }
        let rec = RunRecord {
            start_ms: start,
            end_ms: end,
            experiment: exp_ids[rng.usize(0..EXPERIMENTS)],
            user: Some(users[rng.usize(0..users.len())]),
            team: (i % 7 != 0).then(|| teams[rng.usize(0..TEAMS)]),
            instance_type: (i % 3 != 0).then_some(types[itype]),
            extra: no_extra,
            quality,
            gpu_util_pct: if gpu { rng.f64() * 100.0 } else { f64::NAN },
            features: rng.u32(..64),
            rate: NO_RATE,
            gpus_logged: if gpu { rng.u16(1..5) } else { 0 },
            status,
            deleted: i % 40 == 0,
            hashed_id: false,
            counted_ms: 0,
            counted: 0,
        };
        snap.runs.insert(key, rec);
    }
    snap.runs.shrink_to_fit();
    let s = &mut snap.strings;
    let (ready, none, production) = (s.intern("READY"), s.intern("None"), s.intern("Production"));
    let stages = [s.intern("Staging"), s.intern("Archived"), none];
    let aliases: Vec<Sym> = ["champion", "challenger", "production"]
        .iter()
        .map(|a| s.intern(a))
        .collect();
    for m in 0..MODELS {
        let name = s.intern(&format!("model-{m:03}"));
        let mut rec = ModelRecord {
            aliases: vec![(aliases[0], rng.u32(1..=VERSIONS))],
            team: Some(teams[m % TEAMS]),
            workspace: None,
        };
        if rng.bool() {
            rec.aliases.push((aliases[1], VERSIONS));
        }
        if m % 5 == 0 {
            rec.aliases.push((aliases[2], rng.u32(1..=VERSIONS)));
        }
        snap.models.insert(name, rec);
        for v in 1..=VERSIONS {
            let run = finished[rng.usize(0..finished.len())];
            let created = snap.runs.get(&run).map_or(NOW_MS, |r| r.end_ms) + 60_000;
            let stage = match rng.u8(0..25) {
                0 => production,
                n => stages[usize::from(n) % stages.len()],
            };
            snap.versions.insert(
                (name, v),
                VersionRecord {
                    stage,
                    status: ready,
                    created_ms: created,
                    last_updated_ms: created,
                    run: Some(run),
                    logged_model: None,
                },
            );
        }
    }
    snap
}

/// A month of delivery history on [`install`]'s registry: every serving target seen at a
/// baseline 30 days ago, the champion of 300 models moved 10 days ago (a deployment each), and 40
/// incidents opened in the last two days, 30 of them resolved after half an hour.
pub fn history(
    snap: &mut Snapshot,
    settings: &mlflow_exporter::config::Settings,
) -> mlflow_exporter::delivery::Delivery {
    use mlflow_exporter::delivery::{Bounds, Delivery, Event, Kind, Labelling, Source};
    const H: i64 = 3_600_000;
    let mut d = Delivery::with_labelling(
        Bounds::new(&settings.delivery),
        Labelling::new(&settings.delivery, &settings.webhooks),
    );
    let aliases: Vec<String> = SERVING.iter().map(|a| a.to_string()).collect();
    for e in d.detect(snap, &aliases, true, NOW_MS - 30 * DAY_MS) {
        d.apply(&e);
    }
    let moved: Vec<Sym> = snap.models.keys().copied().take(300).collect();
    for m in moved {
        let rec = snap.models.get_mut(&m).expect("a model");
        rec.aliases[0].1 = rec.aliases[0].1 % 10 + 1;
    }
    for e in d.detect(snap, &aliases, false, NOW_MS - 10 * DAY_MS) {
        d.apply(&e);
    }
    for i in 0..40 {
        let model = format!("model-{:03}", i * 7);
        let sev = ["critical", "warning"][i % 2];
        let id = format!("alert-{i}");
        let at = NOW_MS - (40 - i as i64) * H;
        d.apply(&Event::incident(
            Kind::IncidentOpened,
            Source::Alertmanager,
            &id,
            &model,
            sev,
            at,
        ));
        if i < 30 {
            let end = at + H / 2;
            d.apply(&Event::incident(
                Kind::IncidentResolved,
                Source::Alertmanager,
                &id,
                &model,
                sev,
                end,
            ));
        }
    }
    d
}

/// The install's first cycle as the pipeline runs it, with `settings`: its history published, every
/// run counted into a new tally within the series budget, everything published. Returns the
/// publisher, the tally, the snapshot, the history, what the count did and how long counting and
/// deriving took.
pub fn first_cycle(
    settings: &mlflow_exporter::config::Settings,
) -> (
    mlflow_exporter::exposition::Publisher,
    mlflow_exporter::tally::Tally,
    Snapshot,
    mlflow_exporter::delivery::Delivery,
    mlflow_exporter::tally::CountReport,
    std::time::Duration,
) {
    use mlflow_exporter::exposition::Publisher;
    use mlflow_exporter::metrics::Derivation;
    let publisher = Publisher::detached(Derivation::new(settings)).expect("the families are valid");
    let mut snap = install(100_000);
    let delivery = history(&mut snap, settings);
    publisher.offer_history(&delivery);
    let mut tally = mlflow_exporter::tally::Tally::new(settings);
    let started = std::time::Instant::now();
    let (families, report) = mlflow_exporter::app::count_and_derive(
        &publisher,
        &mut tally,
        &mut snap,
        &delivery,
        Vec::new(),
        true,
        NOW_MS,
    );
    let took = started.elapsed();
    publisher.publish_families(&families, &delivery);
    (publisher, tally, snap, delivery, report, took)
}
