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
mod tests;
