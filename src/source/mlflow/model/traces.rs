//! Wire types of MLflow 3's traces: `traces/search` (trace infos with their assessments and
//! metadata), `traces/metrics` (MLflow's aggregations) and `traces/batchGet` (spans, read for the
//! rate card), lenient where MLflow is loose.

use serde::{Deserialize, Deserializer};

/// `POST /api/3.0/mlflow/traces/search`: traces (`TraceInfoV3`) of MLflow 3's GenAI apps.
#[derive(Debug, Default, Deserialize)]
pub struct SearchTracesResponse {
    #[serde(default)]
    pub traces: Vec<TraceInfo>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One trace, as much of it as the exporter reads: the previews, inputs and outputs MLflow sends
/// along are skipped unread (serde ignores what no field names). Any JSON is taken where a text
/// is expected (as its JSON text), so one odd trace is read as malformed, never a failed page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceInfo {
    #[serde(default, deserialize_with = "text")]
    pub trace_id: String,
    #[serde(default)]
    pub trace_location: TraceLocation,
    /// RFC 3339, e.g. `2026-12-03T17:13:10.767Z`.
    #[serde(default, deserialize_with = "text")]
    pub request_time: String,
    /// Protobuf duration, e.g. `0.049s`.
    #[serde(default, deserialize_with = "text")]
    pub execution_duration: String,
    /// `OK`, `ERROR`, `IN_PROGRESS` (or `STATE_UNSPECIFIED`).
    #[serde(default, deserialize_with = "text")]
    pub state: String,
    #[serde(default)]
    pub trace_metadata: TraceMetadata,
    /// Feedback and expectations on the trace, as far as they were logged when it was read.
    #[serde(default, deserialize_with = "lenient_list")]
    pub assessments: Vec<Assessment>,
}

/// An assessment of a trace (MLflow 3): feedback (a value, or the error that kept a judge from
/// giving one) or an expectation (ground truth, not read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Assessment {
    #[serde(default, deserialize_with = "text")]
    pub assessment_id: String,
    #[serde(default, deserialize_with = "text")]
    pub assessment_name: String,
    #[serde(default)]
    pub source: AssessmentSource,
    /// Absent on an expectation.
    #[serde(default)]
    pub feedback: Option<Feedback>,
    #[serde(default)]
    pub metadata: AssessmentMetadata,
    /// False once another assessment overrides it (`mlflow.override_feedback`); absent before
    /// MLflow had overrides.
    #[serde(default)]
    pub valid: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AssessmentSource {
    /// `HUMAN`, `CODE`, `LLM_JUDGE` (`AI_JUDGE` before MLflow 3.2).
    #[serde(default, deserialize_with = "text")]
    pub source_type: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Feedback {
    /// Any JSON: a boolean, a number, a text (`yes`/`no` from MLflow's judges), a list or object.
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AssessmentMetadata {
    /// What an LLM judge's call cost (a number as text, as MLflow's judges write it).
    #[serde(
        default,
        rename = "mlflow.assessment.judgeCost",
        deserialize_with = "opt_text"
    )]
    pub judge_cost: Option<String>,
}

/// A list whose items that do not decode are read as empty ones (the reader counts them as
/// malformed), and anything but a list as none: one odd assessment never costs its trace or the
/// page.
fn lenient_list<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned + Default>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceLocation {
    #[serde(default)]
    pub mlflow_experiment: TraceExperiment,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceExperiment {
    #[serde(default, deserialize_with = "text")]
    pub experiment_id: String,
}

/// The metadata keys the exporter reads, as MLflow writes them (JSON text for the token usage
/// and the cost; an object is taken as its text); every other key is skipped.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceMetadata {
    #[serde(
        default,
        rename = "mlflow.trace.tokenUsage",
        deserialize_with = "opt_text"
    )]
    pub token_usage: Option<String>,
    #[serde(default, rename = "mlflow.trace.cost", deserialize_with = "opt_text")]
    pub cost: Option<String>,
    /// The app's end user and session the request was for (not a platform user).
    #[serde(default, rename = "mlflow.trace.user", deserialize_with = "opt_text")]
    pub user: Option<String>,
    #[serde(
        default,
        rename = "mlflow.trace.session",
        deserialize_with = "opt_text"
    )]
    pub session: Option<String>,
    /// The run the trace was made in (`mlflow.genai.evaluate`, a script under `start_run`).
    #[serde(default, rename = "mlflow.sourceRun", deserialize_with = "opt_text")]
    pub source_run: Option<String>,
    /// The logged model (MLflow 3's `LoggedModel`) the app was running as.
    #[serde(default, rename = "mlflow.modelId", deserialize_with = "opt_text")]
    pub model_id: Option<String>,
}

/// A string as it is; any other JSON value as its JSON text; null as empty.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_text(d)?.unwrap_or_default())
}

/// As [`text`], with null as `None`.
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// `POST /api/3.0/mlflow/traces/metrics`: MLflow's aggregation of traces, spans or assessments.
#[derive(Debug, Default, Deserialize)]
pub struct TraceMetricsResponse {
    #[serde(default, deserialize_with = "lenient_list")]
    pub data_points: Vec<TraceMetricPoint>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One group of an aggregation: its dimensions' values and each aggregation's (`COUNT`, `SUM`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceMetricPoint {
    #[serde(default)]
    pub dimensions: TraceMetricDimensions,
    #[serde(default)]
    pub values: std::collections::HashMap<String, f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceMetricDimensions {
    #[serde(default, deserialize_with = "opt_text")]
    pub span_model_name: Option<String>,
}

/// `GET /api/3.0/mlflow/traces/batchGet`: whole traces, their spans with every attribute (inputs
/// and outputs too: read, reduced to what [`SpanCall`] keeps, and dropped).
#[derive(Debug, Default, Deserialize)]
pub struct BatchGetTracesResponse {
    #[serde(default, deserialize_with = "lenient_list")]
    pub traces: Vec<FullTrace>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FullTrace {
    #[serde(default)]
    pub trace_info: TraceIdOnly,
    #[serde(default, deserialize_with = "lenient_list")]
    pub spans: Vec<Span>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TraceIdOnly {
    #[serde(default, deserialize_with = "text")]
    pub trace_id: String,
}

/// An OpenTelemetry span as MLflow serves it: attributes as `{key, value: {string_value | int_value
/// | kvlist_value …}}`.
#[derive(Debug, Default, Deserialize)]
pub struct Span {
    #[serde(default, deserialize_with = "lenient_list")]
    pub attributes: Vec<SpanAttribute>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SpanAttribute {
    #[serde(default, deserialize_with = "text")]
    pub key: String,
    #[serde(default)]
    pub value: serde_json::Value,
}

/// What one LLM call (a span naming a model) used, as the rate card needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanCall {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// MLflow priced it (`mlflow.llm.cost`): the rate card leaves it to MLflow's figure.
    pub priced: bool,
}

impl Span {
    /// The call this span made, if it names a model; tokens it does not give (or gives as no
    /// whole number) count 0.
    pub fn call(&self) -> Option<SpanCall> {
        let attr = |k: &str| {
            self.attributes
                .iter()
                .find(|a| a.key == k)
                .map(|a| &a.value)
        };
        let model = attr("mlflow.llm.model")?["string_value"]
            .as_str()?
            .to_string();
        let mut call = SpanCall {
            model,
            priced: attr("mlflow.llm.cost").is_some(),
            ..SpanCall::default()
        };
        let usage = attr("mlflow.chat.tokenUsage").map(|v| &v["kvlist_value"]["values"]);
        for kv in usage.and_then(|u| u.as_array()).into_iter().flatten() {
            let n = &kv["value"]["int_value"];
            let n = n
                .as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n <= 1 << 40)
                .unwrap_or(0);
            match kv["key"].as_str() {
                Some("input_tokens") => call.input_tokens = n,
                Some("output_tokens") => call.output_tokens = n,
                _ => {}
            }
        }
        Some(call)
    }
}

/// The LLM calls of an app's traces to one model over a window, and what MLflow priced them at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmCalls {
    pub model: String,
    pub calls: u64,
    /// US dollars; 0 where MLflow priced nothing.
    pub cost: f64,
}
