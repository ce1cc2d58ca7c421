//! The traces ledger on hand-built reads: each trace and feedback counted once, a trace in
//! progress when it ends (or given up), the cursors and what is remembered, the LLM calls and
//! the rate card's prices.

use super::*;
use crate::sync::traces::{FeedbackRecord, LlmBatch, TraceRecord};

const W: Window = Window {
    overlap_ms: 1_000,
    max_in_progress_ms: 10_000,
    feedback_ms: 0,
    rate: false,
};
const B: Bounds = Bounds {
    duration_ms: &[10],
    score: &[0.5, 1.0],
};

fn trace(id: u128, start_ms: i64, state: TraceState) -> TraceRecord {
    TraceRecord {
        id,
        start_ms,
        duration_ms: 5,
        input_tokens: 1,
        output_tokens: 2,
        cost: 0.5,
        state,
        malformed: 0,
        user: id as u64 % 2 + 1,
        session: id as u64,
        model: 0,
        in_run: false,
    }
}

fn batch(records: Vec<TraceRecord>) -> TraceBatch {
    let mut b = TraceBatch {
        latest_ms: records.iter().map(|r| r.start_ms).max(),
        ..TraceBatch::default()
    };
    b.by_experiment.insert("1".into(), records);
    b
}

/// The experiment's symbol: the first of a table, the same each time.
fn exp() -> Sym {
    crate::sync::snapshot::Interner::default().intern("1")
}

fn count(s: &mut TraceLedger, records: Vec<TraceRecord>, now: i64) -> TraceDeltas {
    let mut unsaved = UnsavedTraces::default();
    s.count(vec![batch(records)], |_| exp(), B, W, now, &mut unsaved)
}

fn feedback(id: u128, trace_start_ms: i64, value: FeedbackValue) -> FeedbackRecord {
    FeedbackRecord {
        id,
        trace_start_ms,
        name: "helpful".into(),
        source: 0,
        value,
        judge_cost: 0.25,
        malformed: 0,
    }
}

/// Traces with their feedback so far, read at `now` with a feedback window of 5 000 ms.
fn count_with_feedback(
    s: &mut TraceLedger,
    records: Vec<TraceRecord>,
    given: Vec<FeedbackRecord>,
    now: i64,
) -> (TraceDeltas, UnsavedTraces) {
    let mut unsaved = UnsavedTraces::default();
    let mut b = batch(records);
    b.feedback.insert("1".into(), given);
    let w = Window {
        feedback_ms: 5_000,
        ..W
    };
    let d = s.count(vec![b], |_| exp(), B, w, now, &mut unsaved);
    (d, unsaved)
}

/// Feedback logged after its trace was counted is counted when a later read (looking back
/// over the feedback window) finds it; each feedback once, the trace not again.
#[test]
fn late_feedback_counts_once_and_its_trace_not_again() {
    let mut s = TraceLedger::default();
    let ok = TraceState::Ok;
    let (d, _) = count_with_feedback(
        &mut s,
        vec![trace(1, 6_000, ok), trace(2, 9_000, ok)],
        vec![feedback(100, 6_000, FeedbackValue::True)],
        10_000,
    );
    let e = &d.by_experiment[&exp()];
    assert_eq!(e.count, [2, 0]);
    assert_eq!(e.feedback[&("helpful".into(), 0)].values, [1, 0, 0, 0, 0]);
    assert_eq!(e.judge_cost, 0.25);
    // Trace 1 is before the overlap (9 000 - 1 000) but inside the window (10 000 - 5 000):
    // remembered, as is what was said of it, and reads may look back to 5 000.
    assert_eq!(s.since(None), Some(8_000));
    assert_eq!(s.memory_from, Some(5_000));
    assert_eq!(
        s.feedback_since(
            Window {
                feedback_ms: 5_000,
                ..W
            },
            10_000
        ),
        Some(5_000)
    );
    assert_eq!(s.feedback_since(W, 10_000), None);
    // Read again from the window: the first feedback again, two new ones on trace 1 (a
    // score of 0.75 and a judge's error).
    let (d, unsaved) = count_with_feedback(
        &mut s,
        vec![trace(1, 6_000, ok), trace(2, 9_000, ok)],
        vec![
            feedback(100, 6_000, FeedbackValue::True),
            feedback(101, 6_000, FeedbackValue::Number(0.75)),
            feedback(102, 6_000, FeedbackValue::Error),
        ],
        10_500,
    );
    let e = &d.by_experiment[&exp()];
    assert_eq!(e.count, [0, 0]);
    let f = &e.feedback[&("helpful".into(), 0)];
    assert_eq!(f.values, [0, 0, 1, 0, 1]);
    assert_eq!(
        (f.scores.counts.as_slice(), f.scores.sum),
        (&[0, 1, 0][..], 0.75)
    );
    assert_eq!(e.judge_cost, 0.5);
    assert_eq!(unsaved.feedback[&101], Some(6_000));
    assert_eq!(s.feedback_remembered(), 3);
    // Once trace 1 is out of the window and the overlap, it and its feedback are forgotten.
    let (d, unsaved) = count_with_feedback(&mut s, vec![trace(3, 20_000, ok)], vec![], 21_000);
    assert_eq!(d.by_experiment[&exp()].count, [1, 0]);
    assert_eq!(s.memory_from, Some(16_000));
    assert_eq!(s.feedback_remembered(), 0);
    assert_eq!(unsaved.feedback[&100], None);
    assert_eq!(s.ids().collect::<Vec<_>>(), [3]);
}

/// An app seen in a traces read gets a cursor for its LLM calls; a window is counted only
/// from where the app's count stands, so one read twice counts once.
#[test]
fn llm_calls_count_once_per_window() {
    use crate::source::mlflow::model::LlmCalls;
    let mut s = TraceLedger::default();
    count(&mut s, vec![trace(1, 100, TraceState::Ok)], 1_000);
    let app: (Box<str>, Box<str>) = ("".into(), "1".into());
    assert_eq!(s.llm_cursors[&app], NEVER);
    let window = |from_ms: i64, next_ms: i64, calls: u64| LlmBatch {
        workspace: None,
        experiment_id: "1".into(),
        from_ms,
        next_ms,
        calls: vec![LlmCalls {
            model: "gpt-4o".into(),
            calls,
            cost: 0.5,
        }],
    };
    let mut d = TraceDeltas::default();
    let mut unsaved = UnsavedTraces::default();
    // The first window, then the same one read again (its cycle was not counted): once.
    s.count_llm(
        vec![window(NEVER, 500, 2), window(NEVER, 700, 3)],
        |_| exp(),
        &mut d,
        &mut unsaved,
    );
    s.count_llm(vec![window(500, 900, 4)], |_| exp(), &mut d, &mut unsaved);
    assert_eq!(d.by_experiment[&exp()].llm["gpt-4o"], (6, 1.0));
    assert_eq!(s.llm_cursors[&app], 900);
    assert!(unsaved.llm_cursors);
    // A workspace no longer read drops its apps' cursors.
    s.keep_scopes(&["other"], &mut unsaved);
    assert!(s.llm_cursors.is_empty());
}

/// With a rate card, traces counted after a scope's first read wait to be read whole; each is
/// priced once, only its calls to models the card prices, and only if it was waited for.
#[test]
fn the_rate_card_prices_each_trace_it_waits_for_once() {
    use crate::source::mlflow::model::SpanCall;
    use crate::sync::traces::RatedBatch;
    let w = Window { rate: true, ..W };
    let mut s = TraceLedger::default();
    let mut unsaved = UnsavedTraces::default();
    let run = |s: &mut TraceLedger, unsaved: &mut UnsavedTraces, records| {
        s.count(vec![batch(records)], |_| exp(), B, w, 10_000, unsaved)
    };
    // The first read (the history): nothing waits.
    run(&mut s, &mut unsaved, vec![trace(1, 1_000, TraceState::Ok)]);
    assert!(s.unrated.is_empty());
    // Then two traces with tokens, one in progress (not counted yet).
    run(
        &mut s,
        &mut unsaved,
        vec![
            trace(2, 2_000, TraceState::Ok),
            trace(3, 2_500, TraceState::InProgress),
        ],
    );
    assert_eq!(s.unrated.keys().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(s.waiting_for_rates(10), [("".into(), 2)]);
    let call = |model: &str, input, output| SpanCall {
        model: model.into(),
        input_tokens: input,
        output_tokens: output,
        priced: false,
    };
    let rates: HashMap<Box<str>, (f64, f64)> = [("house".into(), (1.0, 4.0))].into_iter().collect();
    let read = RatedBatch {
        workspace: None,
        asked: vec![2],
        calls: vec![(2, call("house", 1_000, 500)), (2, call("other", 7, 7))],
    };
    let mut d = TraceDeltas::default();
    s.count_rated(
        vec![read.clone(), read],
        |_| exp(),
        &rates,
        &mut d,
        &mut unsaved,
    );
    // Once, though read twice: 1 000 × 1 + 500 × 4 per million.
    assert_eq!(
        d.by_experiment[&exp()].rated["house"],
        ([1_000, 500], 0.003)
    );
    assert!(!d.by_experiment[&exp()].rated.contains_key("other"));
    assert!(s.unrated.is_empty());
    assert_eq!(unsaved.unrated[&2], None);
}

/// A feedback whose judge cost cannot be read counts, as feedback, once; the cost part is
/// counted unreadable once too, and read again it counts nothing.
#[test]
fn a_feedback_with_an_unreadable_cost_is_counted_and_flagged_once() {
    let mut s = TraceLedger::default();
    let bad = FeedbackRecord {
        judge_cost: f64::NAN,
        malformed: malformed::JUDGE_COST,
        ..feedback(100, 9_000, FeedbackValue::True)
    };
    let part = malformed::KEYS
        .iter()
        .position(|(bit, _)| *bit == malformed::JUDGE_COST)
        .unwrap();
    for expected in [1, 0] {
        let (d, _) = count_with_feedback(
            &mut s,
            vec![trace(2, 9_000, TraceState::Ok)],
            vec![bad.clone()],
            10_000,
        );
        assert_eq!(d.malformed[part], expected);
        assert_eq!(d.malformed.iter().sum::<u64>(), expected);
        let e = &d.by_experiment[&exp()];
        assert_eq!(e.judge_cost, 0.0);
        let counted = e.feedback.get(&("helpful".into(), 0)).map(|f| f.values);
        assert_eq!(counted, (expected == 1).then_some([1, 0, 0, 0, 0]));
    }
}

/// A ledger saved before feedback was read remembers only from its lowest cursor: a read for
/// feedback does not look back before it, as it would count forgotten traces again.
#[test]
fn a_ledger_from_before_feedback_looks_back_no_further_than_it_remembers() {
    let mut s = TraceLedger::default();
    s.cursors.insert("".into(), 8_000);
    let w = Window {
        feedback_ms: 5_000,
        ..W
    };
    assert_eq!(s.feedback_since(w, 10_000), None);
    count_with_feedback(
        &mut s,
        vec![trace(2, 9_000, TraceState::Ok)],
        vec![],
        10_000,
    );
    assert_eq!(s.memory_from, Some(8_000));
    assert_eq!(s.feedback_since(w, 10_000), Some(8_000));
    // As time passes the window moves past it.
    count_with_feedback(
        &mut s,
        vec![trace(3, 16_000, TraceState::Ok)],
        vec![],
        16_000,
    );
    assert_eq!(s.memory_from, Some(11_000));
    assert_eq!(s.feedback_since(w, 16_000), Some(11_000));
}

/// The overlap re-reads what was counted: counted once. A trace in progress is counted when
/// it ends and holds the cursor until then; what is before every cursor is forgotten.
#[test]
fn each_trace_counts_once_and_one_in_progress_when_it_ends() {
    let mut s = TraceLedger::default();
    let (ok, running) = (TraceState::Ok, TraceState::InProgress);
    let d = count(
        &mut s,
        vec![
            trace(1, 100, ok),
            trace(2, 200, running),
            trace(4, 5_000, ok),
        ],
        6_000,
    );
    let e = &d.by_experiment[&exp()];
    assert_eq!((e.count, e.tokens, e.cost), ([2, 0], [2, 4], 1.0));
    // Their users (id % 2 + 1) and sessions (the id), each at its latest start; the trace in
    // progress names none yet.
    let people = |m: &HashMap<u64, i64>| {
        let mut v: Vec<(u64, i64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort();
        v
    };
    assert_eq!(people(&e.people[0]), [(1, 5_000), (2, 100)]);
    assert_eq!(people(&e.people[1]), [(1, 100), (4, 5_000)]);
    // Held at the trace in progress (200), not at 5 000 - 1 000.
    assert_eq!(s.since(None), Some(200));
    // Read again with the trace in progress ended in error, and a new one: those two count.
    let d = count(
        &mut s,
        vec![
            trace(2, 200, TraceState::Error),
            trace(4, 5_000, ok),
            trace(3, 6_000, ok),
        ],
        7_000,
    );
    let e = &d.by_experiment[&exp()];
    assert_eq!(e.count, [1, 1]);
    // Its 5 ms in the first bucket (10 ms).
    assert_eq!(e.durations[1].counts, [1, 0]);
    assert_eq!(s.since(None), Some(5_000));
    // 1 and 2 started before the cursor: forgotten.
    let mut kept: Vec<u128> = s.ids().collect();
    kept.sort();
    assert_eq!(kept, [3, 4]);
    let d = count(&mut s, vec![trace(3, 6_000, ok)], 8_000);
    assert_eq!(d.by_experiment[&exp()].count, [0, 0]);
    assert_eq!(s.since(None), Some(5_000));
}

/// A workspace no longer read loses its cursor, and the traces only it held back are
/// forgotten.
#[test]
fn a_scope_no_longer_read_holds_nothing_back() {
    let mut s = TraceLedger::default();
    let mut unsaved = UnsavedTraces::default();
    let mut old = batch(vec![trace(1, 100, TraceState::Ok)]);
    old.workspace = Some("gone".into());
    let mut new = batch(vec![trace(2, 9_000, TraceState::Ok)]);
    new.workspace = Some("kept".into());
    s.count(vec![old, new], |_| exp(), B, W, 9_500, &mut unsaved);
    // The old scope's cursor (100 - 1 000) holds trace 2 of the other in memory.
    assert_eq!(s.remembered(), 2);
    s.keep_scopes(&["kept"], &mut unsaved);
    assert_eq!(s.since(Some("gone")), None);
    assert_eq!(s.since(Some("kept")), Some(8_000));
    assert_eq!(s.ids().collect::<Vec<_>>(), [2]);
    assert!(unsaved.cursors);
    assert_eq!(unsaved.seen[&1], None);
}

/// A trace in progress longer than the wait is given up: the cursor moves on without it.
#[test]
fn a_trace_in_progress_too_long_is_given_up() {
    let mut s = TraceLedger::default();
    let d = count(
        &mut s,
        vec![
            trace(1, 100, TraceState::InProgress),
            trace(2, 20_000, TraceState::Ok),
        ],
        20_500,
    );
    assert_eq!(d.given_up, 1);
    assert_eq!(s.since(None), Some(19_000));
    assert_eq!(s.seen(1), None);
    assert_eq!(s.remembered(), 1);
}
