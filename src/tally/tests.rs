//! The tally's rules on hand-built snapshots: each run counted once, removed runs and moved ends
//! counted as corrections (once), sticky labels, the series budget, and the store round trip.

use super::budget::{feedback_lines, histogram_lines};
use super::*;
use crate::config::Settings;
use crate::sync::snapshot::{ExperimentRecord, ModelRecord, RunStatus, VersionRecord, NO_TIME};

const H: i64 = 3_600_000;
const NOW: i64 = 1_800_000_000_000;

fn experiment(snap: &mut Snapshot, id: &str, name: &str, team: Option<&str>) -> Sym {
    let s = &mut snap.strings;
    let rec = ExperimentRecord {
        name: s.intern(name),
        deleted: false,
        team: team.map(|t| s.intern(t)),
        workspace: None,
    };
    let id = s.intern(id);
    snap.experiments.insert(id, rec);
    id
}

fn run(snap: &mut Snapshot, key: RunKey, exp: Sym, status: RunStatus, start: i64, end: i64) {
    snap.runs
        .insert(key, RunRecord::new(exp, status, start, end));
}

/// A cycle as the pipeline runs it: admit labels, count, with this much room for new series.
fn cycle(
    t: &mut Tally,
    snap: &mut Snapshot,
    gone: Vec<(RunKey, RunRecord)>,
    full: bool,
    now: i64,
    room: usize,
) -> CountReport {
    t.labels.admit(snap);
    let folds = t.labels.folds(snap);
    t.count(snap, &folds, gone, full, now, room)
}

fn k(values: &[&str]) -> Key {
    key(values)
}

/// Two experiments; runs 1–3 ended (1 h, 2 h, 30 min), run 4 running for an hour.
fn install() -> Snapshot {
    let mut snap = Snapshot::default();
    let a = experiment(&mut snap, "1", "exp-a", Some("ml"));
    let b = experiment(&mut snap, "2", "exp-b", None);
    run(
        &mut snap,
        1,
        a,
        RunStatus::Finished,
        NOW - 5 * H,
        NOW - 4 * H,
    );
    run(&mut snap, 2, a, RunStatus::Failed, NOW - 5 * H, NOW - 3 * H);
    run(
        &mut snap,
        3,
        b,
        RunStatus::Finished,
        NOW - 2 * H,
        NOW - 2 * H + H / 2,
    );
    run(&mut snap, 4, b, RunStatus::Running, NOW - H, NO_TIME);
    snap
}

#[test]
fn each_run_counts_once_and_running_time_accrues() {
    let settings = Settings::default();
    let mut snap = install();
    let mut t = Tally::new(&settings);
    let r = cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    assert_eq!(r.runs, 4);
    assert_eq!(t.ended[&k(&["exp-a"])], [1, 1, 0]);
    assert_eq!(t.ended[&k(&["exp-b"])], [1, 0, 0]);
    assert_eq!(t.started[&k(&["exp-a", "ml"])], 2);
    assert_eq!(t.started[&k(&["exp-b", ""])], 2);
    assert_eq!(t.cost[&k(&["exp-b", "", ""])].ms, (H / 2 + H) as u64);
    // Ten minutes later nothing ended: only the running run's time is new.
    let r = cycle(
        &mut t,
        &mut snap,
        Vec::new(),
        false,
        NOW + H / 6,
        usize::MAX,
    );
    assert_eq!(r.runs, 1);
    assert_eq!(t.ended[&k(&["exp-a"])], [1, 1, 0]);
    assert_eq!(
        t.cost[&k(&["exp-b", "", ""])].ms,
        (H / 2 + H + H / 6) as u64
    );
    // A full read with new records of the same runs (their bookkeeping carried): nothing new.
    let mut again = install();
    let gone = again.runs.carry_from(&snap.runs);
    assert!(gone.is_empty());
    let r = cycle(&mut t, &mut again, gone, true, NOW + H / 6, usize::MAX);
    assert_eq!(
        r,
        CountReport {
            runs: 0,
            ..CountReport::default()
        }
    );
    assert_eq!(t.corrections.values().sum::<f64>(), 0.0);
}

#[test]
fn a_removed_run_stays_counted_and_its_share_is_a_correction_once() {
    let mut settings = Settings::default();
    settings.cost.default_hourly_rate = 2.0;
    let mut snap = install();
    let mut t = Tally::new(&settings);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    let before = t.clone();
    // `mlflow gc` removed run 1 (1 h, FINISHED): a full read no longer has it.
    let mut next = install();
    next.runs = {
        let mut runs = crate::sync::snapshot::Runs::default();
        for (key, r) in next.runs.iter().filter(|(key, _)| *key != 1) {
            runs.insert(key, r.clone());
        }
        runs
    };
    let gone = next.runs.carry_from(&snap.runs);
    assert_eq!(gone.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1]);
    let r = cycle(&mut t, &mut next, gone, true, NOW, usize::MAX);
    assert_eq!(r.gone, 1);
    assert_eq!(t.ended, before.ended);
    assert_eq!(t.started, before.started);
    assert_eq!(t.cost, before.cost);
    assert_eq!(t.corrections[names::RUNS_ENDED], 1.0);
    assert_eq!(t.corrections[names::RUN_DURATION], 1.0);
    assert_eq!(t.corrections[names::RUNS_STARTED], 1.0);
    assert_eq!(t.corrections[names::COMPUTE], 3600.0);
    assert_eq!(t.corrections[names::COST], 2.0);
    assert_eq!(t.corrections[names::GPU], 0.0);
    // The next full read counts nothing again.
    let corrections = t.corrections.clone();
    cycle(&mut t, &mut next, Vec::new(), true, NOW, usize::MAX);
    assert_eq!(t.corrections, corrections);
}

#[test]
fn an_end_moved_before_the_time_counted_keeps_the_counter_and_is_corrected_once() {
    let settings = Settings::default();
    let mut snap = install();
    let mut t = Tally::new(&settings);
    // Run 4 has run 1 h at NOW; at NOW + 1 h it is seen ended, backdated to 15 min after its start.
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    let r4 = snap.runs.get_mut(&4).unwrap();
    (r4.status, r4.end_ms) = (RunStatus::Killed, NOW - H + H / 4);
    cycle(&mut t, &mut snap, Vec::new(), false, NOW + H, usize::MAX);
    assert_eq!(t.cost[&k(&["exp-b", "", ""])].ms, (H / 2 + H) as u64);
    assert_eq!(t.corrections[names::COMPUTE], 2700.0);
    assert_eq!(t.ended[&k(&["exp-b"])], [1, 0, 1]);
    let d = &t.durations[&k(&["exp-b"])][2];
    assert_eq!(d.sum_ms, (H / 4) as u64);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW + 2 * H, usize::MAX);
    assert_eq!(t.corrections[names::COMPUTE], 2700.0);
    // Removed later: what is left of it (15 min) is corrected too, 1 h in all.
    let gone = vec![(4, snap.runs.get(&4).unwrap().clone())];
    cycle(&mut t, &mut snap, gone, true, NOW + 2 * H, usize::MAX);
    assert_eq!(t.corrections[names::COMPUTE], 3600.0);
}

#[test]
fn a_value_that_overtakes_others_does_not_move_counted_series() {
    let mut settings = Settings::default();
    settings.metrics.max_label_values = 2;
    let mut snap = Snapshot::default();
    let ids: Vec<Sym> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| experiment(&mut snap, &i.to_string(), n, None))
        .collect();
    let mut key = 0;
    let mut add = |snap: &mut Snapshot, exp: Sym, n: usize| {
        for _ in 0..n {
            key += 1;
            run(snap, key, exp, RunStatus::Finished, NOW - H, NOW);
        }
    };
    add(&mut snap, ids[0], 3);
    add(&mut snap, ids[1], 2);
    add(&mut snap, ids[2], 1);
    let mut t = Tally::new(&settings);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    let counts = |t: &Tally| -> Vec<(String, u64)> {
        t.ended
            .iter()
            .map(|(k, e)| (k[0].to_string(), e[0]))
            .collect()
    };
    assert_eq!(
        counts(&t),
        [("__other__".into(), 1), ("a".into(), 3), ("b".into(), 2)]
    );
    // c gets six more runs and overtakes both: a and b keep their series, c stays folded.
    add(&mut snap, ids[2], 6);
    cycle(&mut t, &mut snap, Vec::new(), false, NOW, usize::MAX);
    assert_eq!(
        counts(&t),
        [("__other__".into(), 7), ("a".into(), 3), ("b".into(), 2)]
    );
}

#[test]
fn series_beyond_the_budget_fold_into_other_last_label_first() {
    let settings = Settings::default();
    let mut snap = Snapshot::default();
    let a = experiment(&mut snap, "1", "a", None);
    let (x, y) = (snap.strings.intern("x"), snap.strings.intern("y"));
    for (key, itype) in [(1, x), (2, y), (3, y)] {
        run(&mut snap, key, a, RunStatus::Finished, NOW - H, NOW);
        snap.runs.get_mut(&key).unwrap().instance_type = Some(itype);
    }
    let mut t = Tally::new(&settings);
    let run_h = histogram_lines(&settings.metrics.run_duration_buckets);
    let gpu_h = histogram_lines(&settings.metrics.gpu_utilization_buckets);
    let trace_h = histogram_lines(&settings.metrics.trace_duration_buckets);
    let feedback = feedback_lines(&settings.metrics.feedback_score_buckets);
    // First the series of __other__ alone of every family, which are always made: ended (3),
    // started, six creation counters (logged models, prompts and prompt versions too), traces
    // (2), their tokens (2), cost and durations (2 histograms), judge cost, feedback, LLM calls
    // (2), traces by logged model (2), rated calls (3), durations (3 histograms), GPU utilization, cost (4).
    let reserved =
        3 + 1 + 6 + 2 + 2 + 1 + 2 * trace_h + 1 + feedback + 2 + 2 + 3 + 3 * run_h + gpu_h + 4;
    // Then room for a's ended runs, its runs started, its experiment, its durations and one cost
    // series of four samples: y (two runs) has its own; x comes second, and a fold of it would
    // take as much room as it: it goes to the series of __other__ alone.
    let r = cycle(
        &mut t,
        &mut snap,
        Vec::new(),
        true,
        NOW,
        reserved + 3 + 1 + 1 + 3 * run_h + 4,
    );
    let other = k(&["__other__", "__other__", "__other__"]);
    let keys: Vec<&Key> = t.cost.keys().collect();
    assert_eq!(keys, [&other, &k(&["a", "", "y"])]);
    assert_eq!(t.cost[&other].ms, H as u64);
    assert_eq!(r.budget_folded, 1);
    // With no room at all a new experiment's series go to __other__ alone, which is always made.
    let b = experiment(&mut snap, "2", "b", None);
    run(&mut snap, 9, b, RunStatus::Failed, NOW - H, NOW);
    cycle(&mut t, &mut snap, Vec::new(), false, NOW, 0);
    assert_eq!(t.ended[&k(&["__other__"])], [0, 1, 0]);
    assert_eq!(t.started[&k(&["__other__", "__other__"])], 1);
    assert!(!t.ended.contains_key(&k(&["b"])));
}

#[test]
fn objects_count_once_and_removed_ones_are_corrections() {
    let settings = Settings::default();
    let mut snap = install();
    let m = snap.strings.intern("churn");
    let (none, ready) = (snap.strings.intern("None"), snap.strings.intern("READY"));
    snap.models.insert(m, ModelRecord::default());
    for v in 1..=2 {
        snap.versions.insert(
            (m, v),
            VersionRecord {
                stage: none,
                status: ready,
                created_ms: NOW,
                last_updated_ms: NOW,
                run: Some(1),
                logged_model: None,
            },
        );
    }
    let mut t = Tally::new(&settings);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    assert_eq!(t.experiments_created[&k(&["ml"])], 1);
    assert_eq!(t.experiments_created[&k(&[""])], 1);
    assert_eq!(t.versions_created[&k(&["churn"])], 2);
    // Run 1 has no user: nobody activated.
    assert_eq!(t.time_to_first_model.counts.iter().sum::<u64>(), 0);
    snap.versions.remove(&(m, 2));
    cycle(&mut t, &mut snap, Vec::new(), false, NOW, usize::MAX);
    assert_eq!(t.corrections[names::VERSIONS_CREATED], 0.0);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    assert_eq!(t.versions_created[&k(&["churn"])], 2);
    assert_eq!(t.corrections[names::VERSIONS_CREATED], 1.0);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    assert_eq!(t.corrections[names::VERSIONS_CREATED], 1.0);
}

#[tokio::test]
async fn the_store_keeps_the_tally_across_a_restart_and_sees_runs_removed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let settings = Settings::default();
    let store = crate::store::EventStore::open(&path).await.unwrap();
    let mut snap = install();
    let mut t = Tally::new(&settings);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    assert!(store.save_tally(&mut t).await.unwrap() > 0);
    assert!(t.unsaved.is_empty());
    assert_eq!(store.save_tally(&mut t).await.unwrap(), 0);
    store.close().await;

    // Restart: read back, then a first full read where run 1 is gone and run 4 still runs.
    let store = crate::store::EventStore::open(&path).await.unwrap();
    let mut back = store.load_tally(Tally::new(&settings)).await.unwrap();
    assert_eq!(back.ended, t.ended);
    assert_eq!(back.cost, t.cost);
    assert_eq!(back.started, t.started);
    assert_eq!(back.experiments_created, t.experiments_created);
    let mut next = install();
    let mut runs = crate::sync::snapshot::Runs::default();
    for (key, r) in next.runs.iter().filter(|(key, _)| *key != 1) {
        runs.insert(key, r.clone());
    }
    next.runs = runs;
    let r = cycle(&mut back, &mut next, Vec::new(), true, NOW + H, usize::MAX);
    assert_eq!(r.gone, 1);
    // Only run 4's hour since is new.
    assert_eq!(r.runs, 1);
    assert_eq!(back.ended, t.ended);
    assert_eq!(
        back.cost[&k(&["exp-b", "", ""])].ms,
        t.cost[&k(&["exp-b", "", ""])].ms + H as u64
    );
    assert_eq!(back.corrections[names::RUNS_ENDED], 1.0);
    assert_eq!(back.corrections[names::COMPUTE], 3600.0);
    store.save_tally(&mut back).await.unwrap();
    store.close().await;

    // And again: the correction is not counted twice, and what was counted is all there.
    let store = crate::store::EventStore::open(&path).await.unwrap();
    let mut third = store.load_tally(Tally::new(&settings)).await.unwrap();
    assert_eq!(third.corrections, back.corrections);
    let mut next = install();
    let mut runs = crate::sync::snapshot::Runs::default();
    for (key, r) in next.runs.iter().filter(|(key, _)| *key != 1) {
        runs.insert(key, r.clone());
    }
    next.runs = runs;
    let r = cycle(&mut third, &mut next, Vec::new(), true, NOW + H, usize::MAX);
    assert_eq!((r.gone, r.runs), (0, 0));
    assert_eq!(third.corrections, back.corrections);
    assert_eq!(third.cost, back.cost);
    store.close().await;
}

#[tokio::test]
async fn a_failed_save_keeps_every_change_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let settings = Settings::default();
    let store = crate::store::EventStore::open(&path).await.unwrap();
    let mut snap = install();
    let mut t = Tally::new(&settings);
    cycle(&mut t, &mut snap, Vec::new(), true, NOW, usize::MAX);
    let runs = t.unsaved.runs.clone();
    let series = t.unsaved.series.len();
    // The table the runs go to is gone: the whole transaction fails.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE tally_runs RENAME TO tally_runs_away")
        .unwrap();
    assert!(store.save_tally(&mut t).await.is_err());
    assert_eq!(t.unsaved.runs, runs);
    assert_eq!(t.unsaved.series.len(), series);
    conn.execute_batch("ALTER TABLE tally_runs_away RENAME TO tally_runs")
        .unwrap();
    drop(conn);
    let written = store.save_tally(&mut t).await.unwrap();
    assert!(t.unsaved.is_empty());
    // What a save that never failed writes, in a store of its own.
    let twin_store = crate::store::EventStore::open(&dir.path().join("twin.db"))
        .await
        .unwrap();
    let mut twin = Tally::new(&settings);
    cycle(&mut twin, &mut install(), Vec::new(), true, NOW, usize::MAX);
    assert_eq!(written, twin_store.save_tally(&mut twin).await.unwrap());
    assert!(written > runs.len() + series);
    twin_store.close().await;
    let back = store.load_tally(Tally::new(&settings)).await.unwrap();
    assert_eq!(back.ended, t.ended);
    assert_eq!(back.cost, t.cost);
    store.close().await;
}

/// A count of traces saves the trace-error series only when one changed: a cycle of good traces
/// writes none of them (every cycle wrote all six before), a malformed one writes its part's.
#[test]
fn trace_errors_are_saved_only_when_they_change() {
    use crate::sync::traces::{malformed, TraceBatch, TraceRecord, TraceState};
    let settings = Settings::default();
    let mut snap = Snapshot::default();
    let trace = |id: u128, bad: u8| TraceRecord {
        id,
        start_ms: NOW - 1_000,
        duration_ms: 5,
        input_tokens: 1,
        output_tokens: 1,
        cost: f64::NAN,
        state: TraceState::Ok,
        malformed: bad,
        user: 0,
        session: 0,
        model: 0,
        in_run: false,
    };
    let batch = |records: Vec<TraceRecord>| {
        let mut b = TraceBatch {
            latest_ms: Some(NOW - 1_000),
            ..TraceBatch::default()
        };
        b.by_experiment.insert("1".into(), records);
        vec![b]
    };
    fn saved(t: &Tally) -> Vec<&str> {
        let mut v: Vec<&str> = t
            .unsaved
            .series
            .iter()
            .filter(|(f, _)| [names::TRACE_ERRORS, names::TRACES_GIVEN_UP].contains(f))
            .map(|(_, k)| k.first().map_or("", |v| &**v))
            .collect();
        v.sort();
        v
    }
    let mut t = Tally::new(&settings);
    snap.traces = batch(vec![trace(1, 0)]);
    cycle(&mut t, &mut snap, Vec::new(), false, NOW, usize::MAX);
    assert_eq!(saved(&t), Vec::<&str>::new());
    snap.traces = batch(vec![trace(2, malformed::COST)]);
    cycle(&mut t, &mut snap, Vec::new(), false, NOW, usize::MAX);
    assert_eq!(saved(&t), ["mlflow.trace.cost"]);
    assert_eq!(t.trace_errors, [0, 1, 0, 0, 0, 0, 0]);
}
