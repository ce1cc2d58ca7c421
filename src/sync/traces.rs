//! MLflow 3's traces (GenAI apps), read incrementally: each cycle searches the traces that started
//! at or after the scope's cursor, which the tally keeps (it counts each trace once, by id, and
//! holds the cursor back for traces still in progress). A trace is kept as a lean record: what
//! the counters need, never its previews, inputs, outputs or spans. Its feedback likewise: a
//! name, who gave it and what it said, never the rationale.

use std::collections::HashMap;

use crate::source::mlflow::model::{Assessment, TraceInfo};

/// A trace's state, as the counters label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceState {
    Ok,
    Error,
    /// Not counted until it ends: re-read while the cursor is held at it.
    InProgress,
}

impl TraceState {
    /// The finished states, in the order of the tally's arrays.
    pub const FINISHED: [TraceState; 2] = [TraceState::Ok, TraceState::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            TraceState::Ok => "OK",
            TraceState::Error => "ERROR",
            TraceState::InProgress => "IN_PROGRESS",
        }
    }

    /// Index in [`TraceState::FINISHED`].
    pub fn index(self) -> usize {
        usize::from(self == TraceState::Error)
    }
}

/// Bits of [`TraceRecord::malformed`]: what of a trace could not be read (and was left out).
pub mod malformed {
    pub const TOKEN_USAGE: u8 = 1;
    pub const COST: u8 = 2;
    pub const REQUEST_TIME: u8 = 4;
    pub const EXECUTION_DURATION: u8 = 8;
    pub const STATE: u8 = 16;
    /// An assessment without an id or a name (or not an object): left out.
    pub const ASSESSMENT: u8 = 32;
    /// A feedback's judge cost that is not a finite, non-negative number (counted per feedback).
    pub const JUDGE_COST: u8 = 64;
    /// The metadata key (or field) each bit names, as `mlflow_exporter_trace_errors_total` labels it.
    pub const KEYS: [(u8, &str); 7] = [
        (TOKEN_USAGE, "mlflow.trace.tokenUsage"),
        (COST, "mlflow.trace.cost"),
        (REQUEST_TIME, "request_time"),
        (EXECUTION_DURATION, "execution_duration"),
        (STATE, "state"),
        (ASSESSMENT, "assessments"),
        (JUDGE_COST, "mlflow.assessment.judgeCost"),
    ];

    /// Adds one to the count of each part `bits` names (per [`KEYS`]).
    pub fn count(bits: u8, parts: &mut [u64; KEYS.len()]) {
        for (n, (bit, _)) in KEYS.iter().enumerate() {
            if bits & bit != 0 {
                parts[n] += 1;
            }
        }
    }
}

/// Who gave a feedback (`source.source_type`), as the `source_type` label names it; MLflow's
/// `AI_JUDGE` of before 3.2 is `LLM_JUDGE`, anything else `UNSPECIFIED`.
pub const SOURCES: [&str; 4] = ["HUMAN", "CODE", "LLM_JUDGE", "UNSPECIFIED"];

/// What a feedback said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeedbackValue {
    /// `true`, or `yes` as MLflow's judges rate (`false`, `no`).
    True,
    False,
    /// A score, observed in `mlflow_trace_feedback_score`.
    Number(f64),
    /// Any other value: a category, a list, an object.
    Text,
    /// No value: the judge failed (`feedback.error`).
    Error,
}

impl FeedbackValue {
    /// The `value` label of each, in [`FeedbackValue::index`] order.
    pub const LABELS: [&'static str; 5] = ["true", "false", "numeric", "text", "error"];

    pub fn index(self) -> usize {
        match self {
            FeedbackValue::True => 0,
            FeedbackValue::False => 1,
            FeedbackValue::Number(_) => 2,
            FeedbackValue::Text => 3,
            FeedbackValue::Error => 4,
        }
    }
}

/// What the counters need of one feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRecord {
    /// The 128 bits of an `a-<32 hex>` id; any other id hashed to as many.
    pub id: u128,
    /// When its trace started: the feedback is remembered as long as its trace can be read again.
    pub trace_start_ms: i64,
    pub name: Box<str>,
    /// Index in [`SOURCES`].
    pub source: u8,
    pub value: FeedbackValue,
    /// What the LLM judge's call cost (`mlflow.assessment.judgeCost`), NaN when not recorded.
    pub judge_cost: f64,
    /// [`malformed`] bits of what of it could not be read (the judge cost).
    pub malformed: u8,
}

/// What the counters need of one trace (80 bytes), held only from a read to its count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRecord {
    /// The 128 bits of a `tr-<32 hex>` id; any other id hashed to as many.
    pub id: u128,
    /// When the request started (ms); for a trace whose time cannot be read, the latest time of
    /// its page, so that it stays in the window of traces already counted as long as they do.
    pub start_ms: i64,
    pub duration_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What MLflow recorded it cost (`mlflow.trace.cost`, `total_cost`), NaN when it did not.
    pub cost: f64,
    pub state: TraceState,
    /// [`malformed`] bits.
    pub malformed: u8,
    /// The app's end user and session ([`person`] of `mlflow.trace.user` and
    /// `mlflow.trace.session`), 0 when the trace names none.
    pub user: u64,
    pub session: u64,
    /// The logged model the trace names (`mlflow.modelId`): 1 + its place in the batch's
    /// [`TraceBatch::models`]; 0 for none.
    pub model: u32,
    /// The trace was made in a run (`mlflow.sourceRun`): evaluation, not production traffic.
    pub in_run: bool,
}

/// Token counts past this are not a trace's: read as malformed rather than counted.
pub const MAX_TOKENS: u64 = 1 << 40;

/// The traces one read found, by experiment id as MLflow spells it.
#[derive(Debug, Clone, Default)]
pub struct TraceBatch {
    /// The workspace the read was of (none without workspaces).
    pub workspace: Option<String>,
    pub by_experiment: HashMap<String, Vec<TraceRecord>>,
    /// The valid feedback on those traces, by experiment.
    pub feedback: HashMap<String, Vec<FeedbackRecord>>,
    /// The latest start among the traces read, if any.
    pub latest_ms: Option<i64>,
    /// The runs the traces were made in (`mlflow.sourceRun`), by id.
    pub source_runs: std::collections::HashSet<Box<str>>,
    /// The logged models the traces name, by id, each once, and their places there.
    pub models: Vec<Box<str>>,
    pub model_index: HashMap<Box<str>, u32>,
}

impl TraceBatch {
    /// Adds one page of traces.
    pub fn add(&mut self, page: Vec<TraceInfo>) {
        // Each trace with its feedback, which takes its trace's start once that is settled.
        let records: Vec<(String, TraceRecord, Vec<FeedbackRecord>)> = page
            .into_iter()
            .map(|t| {
                let mut r = record(&t);
                let meta = &t.trace_metadata;
                if let Some(run) = meta.source_run.as_deref().filter(|r| !r.is_empty()) {
                    if !self.source_runs.contains(run) {
                        self.source_runs.insert(run.into());
                    }
                }
                if let Some(id) = meta.model_id.as_deref().filter(|m| !m.is_empty()) {
                    r.model = self.model(id);
                }
                let (given, bad) = feedback_of(&t.assessments);
                r.malformed |= bad;
                (t.trace_location.mlflow_experiment.experiment_id, r, given)
            })
            .collect();
        // A trace whose start cannot be read takes the page's latest readable one.
        let page_latest = records
            .iter()
            .filter(|(_, r, _)| r.malformed & malformed::REQUEST_TIME == 0)
            .map(|(_, r, _)| r.start_ms)
            .max();
        for (experiment, mut r, mut given) in records {
            if r.malformed & malformed::REQUEST_TIME != 0 {
                r.start_ms = page_latest.or(self.latest_ms).unwrap_or(0);
            }
            self.latest_ms = Some(self.latest_ms.map_or(r.start_ms, |t| t.max(r.start_ms)));
            if !given.is_empty() {
                for f in &mut given {
                    f.trace_start_ms = r.start_ms;
                }
                let slot = self.feedback.entry(experiment.clone()).or_default();
                slot.extend(given);
            }
            self.by_experiment.entry(experiment).or_default().push(r);
        }
    }

    /// The place (from 1) of a logged model among those the batch's traces name.
    fn model(&mut self, id: &str) -> u32 {
        if let Some(at) = self.model_index.get(id) {
            return *at;
        }
        self.models.push(id.into());
        let at = u32::try_from(self.models.len()).unwrap_or(0);
        self.model_index.insert(id.into(), at);
        at
    }

    /// How many traces the batch holds.
    pub fn len(&self) -> usize {
        self.by_experiment.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An app's LLM calls by model over a window of its traces, as MLflow aggregated them: counted
/// once, as the window closes (`mlflow.traces_overlap` after its end, as a trace is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmBatch {
    pub workspace: Option<String>,
    pub experiment_id: String,
    /// Where the window started (the app's cursor when it was read; `i64::MIN`: the first read).
    pub from_ms: i64,
    /// Where the app's next window starts (this one's end, plus 1 ms).
    pub next_ms: i64,
    pub calls: Vec<crate::source::mlflow::model::LlmCalls>,
}

/// The LLM calls of traces the rate card prices, read whole (`traces/batchGet`): calls MLflow did
/// not price, by trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RatedBatch {
    pub workspace: Option<String>,
    /// Every trace asked for, found or not: none is asked for again.
    pub asked: Vec<u128>,
    pub calls: Vec<(u128, crate::source::mlflow::model::SpanCall)>,
}

/// The lean record of a trace; what cannot be read is left out and flagged.
pub fn record(t: &TraceInfo) -> TraceRecord {
    let mut bad = 0;
    let start_ms = chrono::DateTime::parse_from_rfc3339(&t.request_time)
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|_| {
            bad |= malformed::REQUEST_TIME;
            0
        });
    let duration_ms = duration_ms(&t.execution_duration).unwrap_or_else(|| {
        bad |= malformed::EXECUTION_DURATION;
        0
    });
    let state = match t.state.as_str() {
        "OK" => TraceState::Ok,
        "ERROR" => TraceState::Error,
        "IN_PROGRESS" => TraceState::InProgress,
        // An unknown state is counted as an error: the app did not say it succeeded.
        _ => {
            bad |= malformed::STATE;
            TraceState::Error
        }
    };
    let (input_tokens, output_tokens) = match t.trace_metadata.token_usage.as_deref() {
        None => (0, 0),
        Some(text) => tokens(text).unwrap_or_else(|| {
            bad |= malformed::TOKEN_USAGE;
            (0, 0)
        }),
    };
    let cost = match t.trace_metadata.cost.as_deref() {
        None => f64::NAN,
        Some(text) => total_cost(text).unwrap_or_else(|| {
            bad |= malformed::COST;
            f64::NAN
        }),
    };
    TraceRecord {
        id: trace_id(&t.trace_id),
        start_ms,
        duration_ms,
        input_tokens,
        output_tokens,
        cost,
        state,
        malformed: bad,
        user: person(t.trace_metadata.user.as_deref()),
        session: person(t.trace_metadata.session.as_deref()),
        model: 0,
        in_run: t
            .trace_metadata
            .source_run
            .as_deref()
            .is_some_and(|r| !r.is_empty()),
    }
}

/// The valid feedback among a trace's assessments (expectations and overridden feedback left
/// out), and the [`malformed`] bits of those that cannot be read.
pub fn feedback_of(assessments: &[Assessment]) -> (Vec<FeedbackRecord>, u8) {
    let mut bad = 0;
    let mut out = Vec::new();
    for a in assessments {
        if a.assessment_id.is_empty() || a.assessment_name.is_empty() {
            bad |= malformed::ASSESSMENT;
            continue;
        }
        let Some(f) = &a.feedback else { continue };
        let overridden = matches!(&a.valid, Some(serde_json::Value::Bool(false)))
            || matches!(&a.valid, Some(serde_json::Value::String(v)) if v == "false");
        if overridden {
            continue;
        }
        let source = match a.source.source_type.as_str() {
            "HUMAN" => 0,
            "CODE" => 1,
            "LLM_JUDGE" | "AI_JUDGE" => 2,
            _ => 3,
        };
        let (judge_cost, bits) = match a.metadata.judge_cost.as_deref() {
            None => (f64::NAN, 0),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(v) if (0.0..1e12).contains(&v) => (v, 0),
                _ => (f64::NAN, malformed::JUDGE_COST),
            },
        };
        out.push(FeedbackRecord {
            id: prefixed_id("a-", &a.assessment_id),
            trace_start_ms: 0,
            name: a.assessment_name.as_str().into(),
            source,
            value: feedback_value(f),
            judge_cost,
            malformed: bits,
        });
    }
    (out, bad)
}

fn feedback_value(f: &crate::source::mlflow::model::Feedback) -> FeedbackValue {
    use serde_json::Value;
    match &f.value {
        Value::Null if f.error.as_ref().is_some_and(|e| !e.is_null()) => FeedbackValue::Error,
        Value::Bool(true) => FeedbackValue::True,
        Value::Bool(false) => FeedbackValue::False,
        Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map_or(FeedbackValue::Text, FeedbackValue::Number),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" | "true" => FeedbackValue::True,
            "no" | "false" => FeedbackValue::False,
            _ => FeedbackValue::Text,
        },
        _ => FeedbackValue::Text,
    }
}

/// An app's user or session as 64 bits of its name's SHA-256: stable across restarts (the store
/// keeps when each was last active), never the name itself; 0 for none.
pub fn person(name: Option<&str>) -> u64 {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return 0;
    };
    let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

/// `tr-<32 hex>` as its 128 bits; another id (MLflow 2's request ids, a client's own) hashed.
pub fn trace_id(id: &str) -> u128 {
    prefixed_id("tr-", id)
}

/// `<prefix><32 hex>` as its 128 bits; another id hashed to as many.
fn prefixed_id(prefix: &str, id: &str) -> u128 {
    if let Some(hex) = id.strip_prefix(prefix).filter(|h| h.len() == 32) {
        if let Ok(n) = u128::from_str_radix(hex, 16) {
            return n;
        }
    }
    let mut hash = [0u8; 16];
    let digest = <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes());
    hash.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(hash)
}

/// A protobuf JSON duration (`"0.049s"`, `"12s"`) in ms; `None` if it is not one.
fn duration_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| (secs * 1000.0).round() as u64)
}

/// `{"input_tokens": …, "output_tokens": …}`: whole, not negative, not absurd; one missing is 0.
/// A usage with neither (a total alone says nothing of the split) is malformed.
fn tokens(text: &str) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Usage {
        input_tokens: Option<serde_json::Number>,
        output_tokens: Option<serde_json::Number>,
    }
    let u: Usage = serde_json::from_str(text).ok()?;
    let count = |n: Option<serde_json::Number>| -> Option<u64> {
        match n {
            None => Some(0),
            Some(n) => n.as_u64().filter(|v| *v <= MAX_TOKENS),
        }
    };
    if u.input_tokens.is_none() && u.output_tokens.is_none() {
        return None;
    }
    Some((count(u.input_tokens)?, count(u.output_tokens)?))
}

/// `{"total_cost": …}` (or input plus output cost), finite and not negative.
fn total_cost(text: &str) -> Option<f64> {
    #[derive(serde::Deserialize)]
    struct Cost {
        total_cost: Option<f64>,
        input_cost: Option<f64>,
        output_cost: Option<f64>,
    }
    let c: Cost = serde_json::from_str(text).ok()?;
    let total = match (c.total_cost, c.input_cost, c.output_cost) {
        (Some(t), _, _) => t,
        (None, None, None) => return None,
        (None, i, o) => i.unwrap_or(0.0) + o.unwrap_or(0.0),
    };
    (0.0..1e12).contains(&total).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::mlflow::model::TraceMetadata;

    fn info(
        time: &str,
        duration: &str,
        state: &str,
        usage: Option<&str>,
        cost: Option<&str>,
    ) -> TraceInfo {
        TraceInfo {
            trace_id: "tr-51f984dbe6fba1e2c2ba7492042c82ad".into(),
            request_time: time.into(),
            execution_duration: duration.into(),
            state: state.into(),
            trace_metadata: TraceMetadata {
                token_usage: usage.map(String::from),
                cost: cost.map(String::from),
                ..TraceMetadata::default()
            },
            ..TraceInfo::default()
        }
    }

    /// As MLflow 3.17.2 wrote one (`traces/search` of a trace logged by the SDK).
    #[test]
    fn a_trace_as_mlflow_writes_it() {
        let r = record(&info(
            "2026-12-03T17:13:10.767Z",
            "0.049s",
            "OK",
            Some(r#"{"input_tokens": 10, "output_tokens": 22, "total_tokens": 32}"#),
            Some(r#"{"input_cost": 2.5e-05, "output_cost": 0.00022, "total_cost": 0.000245}"#),
        ));
        assert_eq!(
            r,
            TraceRecord {
                id: 0x51f984dbe6fba1e2c2ba7492042c82ad,
                start_ms: 1_796_317_990_767,
                duration_ms: 49,
                input_tokens: 10,
                output_tokens: 22,
                cost: 0.000245,
                state: TraceState::Ok,
                malformed: 0,
                user: 0,
                session: 0,
                model: 0,
                in_run: false,
            }
        );
        assert_eq!(std::mem::size_of::<TraceRecord>(), 80);
    }

    /// Whatever is wrong with a trace's metadata is left out and flagged, never a panic; the
    /// rest of it still counts.
    #[test]
    fn malformed_metadata_is_flagged_and_left_out() {
        // (request time, duration, state, token usage, cost, the bits flagged)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            u8,
        );
        let cases: [Case; 9] = [
            ("x", "1s", "OK", None, None, malformed::REQUEST_TIME),
            (
                "2026-12-03T17:13:10Z",
                "-1s",
                "OK",
                None,
                None,
                malformed::EXECUTION_DURATION,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1",
                "OK",
                None,
                None,
                malformed::EXECUTION_DURATION,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "DONE",
                None,
                None,
                malformed::STATE,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "OK",
                Some("{not json"),
                None,
                malformed::TOKEN_USAGE,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "OK",
                Some(r#"{"input_tokens": -3}"#),
                None,
                malformed::TOKEN_USAGE,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "OK",
                Some(r#"{"input_tokens": 1e300, "output_tokens": 1}"#),
                None,
                malformed::TOKEN_USAGE,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "OK",
                Some(r#"{"total_tokens": 5}"#),
                Some("[]"),
                malformed::TOKEN_USAGE | malformed::COST,
            ),
            (
                "2026-12-03T17:13:10Z",
                "1s",
                "OK",
                None,
                Some(r#"{"total_cost": -1}"#),
                malformed::COST,
            ),
        ];
        for (time, duration, state, usage, cost, bits) in cases {
            let r = record(&info(time, duration, state, usage, cost));
            assert_eq!(
                r.malformed, bits,
                "{time} {duration} {state} {usage:?} {cost:?}"
            );
            assert_eq!((r.input_tokens, r.output_tokens), (0, 0));
        }
        // Only an output count: the input is 0.
        let r = record(&info(
            "2026-12-03T17:13:10Z",
            "2.5s",
            "ERROR",
            Some(r#"{"output_tokens": 7}"#),
            None,
        ));
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.duration_ms, r.malformed),
            (0, 7, 2500, 0)
        );
        assert_eq!(r.state, TraceState::Error);
        assert!(r.cost.is_nan());
    }

    /// A trace whose start cannot be read takes its page's latest start.
    #[test]
    fn a_trace_without_a_readable_start_takes_its_pages_latest() {
        let mut batch = TraceBatch::default();
        let mut a = info("2026-12-03T17:13:10Z", "1s", "OK", None, None);
        a.trace_location.mlflow_experiment.experiment_id = "1".into();
        let mut b = a.clone();
        b.request_time = "yesterday".into();
        b.trace_id = "client-id".into();
        batch.add(vec![b, a]);
        let got = &batch.by_experiment["1"];
        assert_eq!(got[0].start_ms, got[1].start_ms);
        assert_eq!(got[0].malformed, malformed::REQUEST_TIME);
        assert_ne!(got[0].id, got[1].id);
        assert_eq!(batch.latest_ms, Some(got[1].start_ms));
        assert_eq!(batch.len(), 2);
    }
}

#[cfg(test)]
mod page_tests {
    use super::{malformed, FeedbackValue, TraceBatch};
    use crate::source::mlflow::model::SearchTracesResponse;

    /// Spans as MLflow 3.17.2's `traces/batchGet` returns them (OpenTelemetry attributes): the
    /// calls that name a model, their tokens, and whether MLflow priced them; the rest is dropped.
    #[test]
    fn span_calls_are_read_from_batch_get() {
        use crate::source::mlflow::model::{BatchGetTracesResponse, SpanCall};
        let answer = r#"{"traces": [{"trace_info": {"trace_id": "tr-1195bebe1706401c7b7092ee85bbe296"},
          "spans": [
            {"name": "chat", "attributes": [
              {"key": "mlflow.spanType", "value": {"string_value": "UNKNOWN"}},
              {"key": "mlflow.spanInputs", "value": {"kvlist_value": {"values": [{"key": "q", "value": {"string_value": "x"}}]}}}]},
            {"name": "llm", "attributes": [
              {"key": "mlflow.chat.tokenUsage", "value": {"kvlist_value": {"values": [
                {"key": "input_tokens", "value": {"int_value": "10"}},
                {"key": "output_tokens", "value": {"int_value": 22}},
                {"key": "total_tokens", "value": {"int_value": "32"}}]}}},
              {"key": "mlflow.llm.model", "value": {"string_value": "gpt-4o"}},
              {"key": "mlflow.llm.cost", "value": {"kvlist_value": {"values": []}}}]},
            {"name": "llm2", "attributes": [
              {"key": "mlflow.chat.tokenUsage", "value": {"kvlist_value": {"values": [
                {"key": "input_tokens", "value": {"int_value": "-5"}},
                {"key": "output_tokens", "value": {"int_value": "50"}}]}}},
              {"key": "mlflow.llm.model", "value": {"string_value": "house-llm-7b"}}]},
            "not a span"
          ]}]}"#;
        let r: BatchGetTracesResponse = serde_json::from_str(answer).unwrap();
        let calls: Vec<SpanCall> = r.traces[0].spans.iter().filter_map(|s| s.call()).collect();
        assert_eq!(
            r.traces[0].trace_info.trace_id,
            "tr-1195bebe1706401c7b7092ee85bbe296"
        );
        assert_eq!(
            calls,
            [
                SpanCall {
                    model: "gpt-4o".into(),
                    input_tokens: 10,
                    output_tokens: 22,
                    priced: true
                },
                // A negative count is no count.
                SpanCall {
                    model: "house-llm-7b".into(),
                    input_tokens: 0,
                    output_tokens: 50,
                    priced: false
                },
            ]
        );
    }

    /// Assessments as MLflow 3.17.2 returned them in `traces/search` (logged with
    /// `mlflow.log_feedback` and `log_expectation`), with a judge's yes, an overridden feedback
    /// and two that cannot be read added: the expectation and the overridden one are left out.
    #[test]
    fn feedback_is_read_from_the_traces_assessments() {
        let page = r#"{"traces": [{"trace_id": "tr-df802ab41d4f6a3860662b78ce249463",
          "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "1"}},
          "request_time": "2026-12-04T01:07:03.117Z", "execution_duration": "0.098s", "state": "OK",
          "assessments": [
            {"assessment_id": "a-b94e1df415404dcaacf52300c1bc96a8", "assessment_name": "helpful",
             "source": {"source_type": "HUMAN", "source_id": "ann"}, "feedback": {"value": true}, "valid": true},
            {"assessment_id": "a-9ca0fabc8f1a453d854425654262873a", "assessment_name": "score",
             "source": {"source_type": "LLM_JUDGE", "source_id": "gpt-4o"}, "feedback": {"value": 0.75},
             "metadata": {"mlflow.assessment.judgeCost": "0.0012"}, "valid": true},
            {"assessment_id": "a-274b6f9a1e98414ab41e835c8e562776", "assessment_name": "tone",
             "source": {"source_type": "CODE", "source_id": "rule"}, "feedback": {"value": "polite"}, "valid": true},
            {"assessment_id": "a-653be5cd504d4802bcdcf2fbda26b60a", "assessment_name": "expected",
             "source": {"source_type": "HUMAN", "source_id": "default"}, "expectation": {"value": "x"}, "valid": true},
            {"assessment_id": "a-70335e61343a4ccb8e0e890dfa58c6ed", "assessment_name": "bad",
             "source": {"source_type": "LLM_JUDGE", "source_id": "gpt-4o"},
             "feedback": {"value": null, "error": {"error_code": "ValueError", "error_message": "judge failed"}}, "valid": true},
            {"assessment_id": "a-00000000000000000000000000000001", "assessment_name": "correct",
             "source": {"source_type": "AI_JUDGE"}, "feedback": {"value": "Yes"},
             "metadata": {"mlflow.assessment.judgeCost": "abc"}},
            {"assessment_id": "a-00000000000000000000000000000002", "assessment_name": "helpful",
             "source": {"source_type": "HUMAN"}, "feedback": {"value": false}, "valid": false},
            {"assessment_name": "no id", "feedback": {"value": true}},
            "not an object"
          ]}], "next_page_token": null}"#;
        let p: SearchTracesResponse = serde_json::from_str(page).unwrap();
        let mut batch = TraceBatch::default();
        batch.add(p.traces);
        let trace = &batch.by_experiment["1"][0];
        assert_eq!(trace.malformed, malformed::ASSESSMENT);
        let got: Vec<(&str, u8, FeedbackValue, String, u8)> = batch.feedback["1"]
            .iter()
            .map(|f| {
                assert_eq!(f.trace_start_ms, trace.start_ms);
                (
                    &*f.name,
                    f.source,
                    f.value,
                    format!("{:?}", f.judge_cost),
                    f.malformed,
                )
            })
            .collect();
        let nan = format!("{:?}", f64::NAN);
        assert_eq!(
            got,
            [
                ("helpful", 0, FeedbackValue::True, nan.clone(), 0),
                ("score", 2, FeedbackValue::Number(0.75), "0.0012".into(), 0),
                ("tone", 1, FeedbackValue::Text, nan.clone(), 0),
                ("bad", 2, FeedbackValue::Error, nan.clone(), 0),
                (
                    "correct",
                    2,
                    FeedbackValue::True,
                    nan,
                    malformed::JUDGE_COST
                ),
            ]
        );
        assert_eq!(
            batch.feedback["1"][0].id,
            0xb94e1df415404dcaacf52300c1bc96a8
        );
    }

    /// A page where one trace's fields have the wrong JSON types still decodes: that trace is
    /// read as malformed (an object for the token usage is read as the usage), the others whole.
    #[test]
    fn a_page_with_odd_types_decodes() {
        let page = r#"{"traces": [
            {"trace_id": 7, "request_time": 12, "execution_duration": null, "state": ["OK"],
             "trace_location": {"mlflow_experiment": {"experiment_id": 1}},
             "trace_metadata": {"mlflow.trace.tokenUsage": {"input_tokens": 3, "output_tokens": 4},
                                "mlflow.trace.cost": 5, "mlflow.traceInputs": {"q": "x"}},
             "request_preview": "long text"},
            {"trace_id": "tr-00000000000000000000000000000abc", "request_time": "2026-12-03T17:24:16Z",
             "execution_duration": "2s", "state": "OK",
             "trace_location": {"mlflow_experiment": {"experiment_id": "1"}}}
        ], "next_page_token": null}"#;
        let p: SearchTracesResponse = serde_json::from_str(page).unwrap();
        let odd = super::record(&p.traces[0]);
        assert_eq!(
            p.traces[0].trace_location.mlflow_experiment.experiment_id,
            "1"
        );
        assert_eq!((odd.input_tokens, odd.output_tokens), (3, 4));
        use super::malformed::*;
        assert_eq!(
            odd.malformed,
            REQUEST_TIME | EXECUTION_DURATION | STATE | COST
        );
        let fine = super::record(&p.traces[1]);
        assert_eq!(
            (fine.id, fine.duration_ms, fine.malformed),
            (0xabc, 2000, 0)
        );
    }
}
