//! Wire types of the MLflow REST responses the exporter reads, lenient where MLflow is loose
//! (int64 as number or string, NaN metrics as strings, absent lists).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

mod traces;
pub use traces::*;

/// `{key, value}` of tags and params.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub creation_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub last_update_time: Option<i64>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchExperimentsResponse {
    #[serde(default)]
    pub experiments: Vec<Experiment>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// A run as `runs/search` lists it, borrowing its strings from the page's bytes (a string with JSON
/// escapes is the only one copied): a large install's runs are decoded without an allocation per field.
#[derive(Debug, Deserialize)]
pub struct Run<'a> {
    #[serde(borrow)]
    pub info: RunInfo<'a>,
    #[serde(default, borrow)]
    pub data: RunData<'a>,
    #[serde(default)]
    pub inputs: RunInputs,
}

/// Only whether a run logged dataset inputs matters, not what they were (`IgnoredAny` takes no memory).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunInputs {
    #[serde(default)]
    pub dataset_inputs: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct RunInfo<'a> {
    #[serde(borrow)]
    pub run_id: Cow<'a, str>,
    #[serde(borrow)]
    pub experiment_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub user_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub status: Cow<'a, str>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
    #[serde(default, borrow)]
    pub lifecycle_stage: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RunData<'a> {
    #[serde(default, borrow)]
    pub metrics: Vec<Metric<'a>>,
    #[serde(default, borrow)]
    pub params: Vec<Tag<'a>>,
    #[serde(default, borrow)]
    pub tags: Vec<Tag<'a>>,
}

/// `{key, value}` of a run's tags and params, borrowed from the page.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Tag<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(default, borrow)]
    pub value: Cow<'a, str>,
}

/// The latest value of one metric key of a run.
#[derive(Debug, Clone, Deserialize)]
pub struct Metric<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub value: f64,
}

/// One page of `runs/search`, borrowing from its bytes.
#[derive(Debug, Default, Deserialize)]
pub struct SearchRunsResponse<'a> {
    #[serde(default, borrow)]
    pub runs: Vec<Run<'a>>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// A key and its value, of an owned [`KeyValue`] or a borrowed [`Tag`], for code that reads either.
pub trait Pair {
    fn key(&self) -> &str;
    fn value(&self) -> &str;
}

impl Pair for KeyValue {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

impl Pair for Tag<'_> {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Alias {
    pub alias: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredModel {
    pub name: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub creation_timestamp: Option<i64>,
    #[serde(default)]
    pub aliases: Vec<Alias>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// `registered-models/get`.
#[derive(Debug, Deserialize)]
pub struct GetRegisteredModelResponse {
    pub registered_model: RegisteredModel,
}

/// `model-versions/get`.
#[derive(Debug, Deserialize)]
pub struct GetModelVersionResponse {
    pub model_version: ModelVersion,
}

/// `runs/get`, only the run's times.
#[derive(Debug, Deserialize)]
pub struct GetRunResponse {
    pub run: RunTimes,
}

#[derive(Debug, Deserialize)]
pub struct RunTimes {
    pub info: RunTimesInfo,
}

#[derive(Debug, Deserialize)]
pub struct RunTimesInfo {
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchRegisteredModelsResponse {
    #[serde(default)]
    pub registered_models: Vec<RegisteredModel>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub creation_timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub last_updated_timestamp: Option<i64>,
    #[serde(default)]
    pub current_stage: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub run_id: String,
    /// Where the version's files are; `models:/<model id>` for a version of a logged model.
    #[serde(default)]
    pub source: String,
    /// The logged model it was registered from (MLflow 3, when the server says so).
    #[serde(default)]
    pub model_id: String,
}

impl ModelVersion {
    /// The logged model this version was registered from: its `model_id`, else the id its
    /// `models:/<id>` source names.
    pub fn logged_model(&self) -> Option<&str> {
        if !self.model_id.is_empty() {
            return Some(&self.model_id);
        }
        let id = self.source.strip_prefix("models:/")?;
        let id = id.split('/').next().unwrap_or(id);
        (!id.is_empty()).then_some(id)
    }
}

/// `POST /api/2.0/mlflow/logged-models/search` (MLflow 3).
#[derive(Debug, Default, Deserialize)]
pub struct SearchLoggedModelsResponse {
    #[serde(default)]
    pub models: Vec<LoggedModel>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoggedModel {
    pub info: LoggedModelInfo,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoggedModelInfo {
    pub model_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub creation_timestamp_ms: Option<i64>,
    /// `LOGGED_MODEL_PENDING`, `LOGGED_MODEL_READY`, `LOGGED_MODEL_UPLOAD_FAILED`.
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchModelVersionsResponse {
    #[serde(default)]
    pub model_versions: Vec<ModelVersion>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// `GET /api/3.0/mlflow/server-info` (MLflow 3): what the server supports.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ServerInfo {
    /// Started with `--enable-workspaces`: each request reads the workspace its
    /// `X-MLFLOW-WORKSPACE` header names (`default` without one).
    #[serde(default)]
    pub workspaces_enabled: bool,
}

/// `GET /api/3.0/mlflow/workspaces`: every workspace (not paged).
#[derive(Debug, Default, Deserialize)]
pub struct ListWorkspacesResponse {
    #[serde(default)]
    pub workspaces: Vec<Workspace>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Workspace {
    pub name: String,
}

/// MLflow's error body.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
}

/// A page of a search: its items and the token of the next page.
pub trait Page {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, Option<String>);
}

macro_rules! page {
    ($resp:ty, $field:ident, $item:ty) => {
        impl Page for $resp {
            type Item = $item;
            fn into_parts(self) -> (Vec<$item>, Option<String>) {
                (self.$field, self.next_page_token.filter(|t| !t.is_empty()))
            }
        }
    };
}
page!(SearchExperimentsResponse, experiments, Experiment);
page!(SearchLoggedModelsResponse, models, LoggedModel);
page!(
    SearchRegisteredModelsResponse,
    registered_models,
    RegisteredModel
);
page!(SearchModelVersionsResponse, model_versions, ModelVersion);
page!(SearchTracesResponse, traces, TraceInfo);
page!(TraceMetricsResponse, data_points, TraceMetricPoint);

/// int64 fields arrive as JSON numbers, or as strings from proto-JSON encoders. A visitor rather
/// than an untagged enum: that would buffer every timestamp of a million runs before trying each form.
fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer, or a string holding one")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // `as` saturates; a NaN or infinite time means no time.
            Ok(v.is_finite().then_some(v as i64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse().map(Some).map_err(E::custom)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_option(V)
}

/// Metric values may be `"NaN"` or `"Infinity"` strings; anything unreadable is NaN.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, or a string holding one")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            Ok(v.parse().unwrap_or(f64::NAN))
        }
        fn visit_none<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_run_with_loose_numbers() {
        let r: SearchRunsResponse = serde_json::from_str(
            r#"{"runs":[{"info":{"run_id":"ab","experiment_id":"1","user_id":"u","status":"RUNNING",
            "start_time":"1700000000000","lifecycle_stage":"active"},
            "data":{"metrics":[{"key":"loss","value":"NaN","timestamp":1,"step":0},{"key":"acc","value":0.5}]}}],
            "next_page_token":""}"#,
        )
        .unwrap();
        assert_eq!(r.next_page_token.as_deref(), Some(""));
        let runs = r.runs;
        assert_eq!(runs[0].info.start_time, Some(1_700_000_000_000));
        assert_eq!(runs[0].info.end_time, None);
        assert!(runs[0].data.metrics[0].value.is_nan());
        assert_eq!(runs[0].data.metrics[1].value, 0.5);
        assert!(runs[0].data.tags.is_empty());
    }

    #[test]
    fn run_strings_borrow_from_the_page_unless_escaped() {
        let text = r#"{"runs":[{"info":{"run_id":"ab","experiment_id":"1","user_id":"a\"b@x","status":"FINISHED",
            "start_time":1.5e12,"end_time":null,"lifecycle_stage":"active"},
            "data":{"tags":[{"key":"team","value":"vision\u00e9"},{"key":"k"}],"params":[{"key":"p","value":"1"}],
            "metrics":[{"key":"a","value":3},{"key":"b","value":"Infinity"},{"key":"c","value":null},{"key":"d"}]},
            "inputs":{"dataset_inputs":[{"dataset":{"name":"d"}},{}]}}]}"#;
        let r: SearchRunsResponse = serde_json::from_str(text).unwrap();
        let run = &r.runs[0];
        assert!(matches!(run.info.run_id, Cow::Borrowed("ab")));
        assert!(matches!(run.data.params[0].value, Cow::Borrowed("1")));
        // Escapes cannot be borrowed: decoded into their own string.
        assert!(matches!(&run.info.user_id, Cow::Owned(s) if s == "a\"b@x"));
        assert_eq!(run.data.tags[0].value, "vision\u{e9}");
        assert_eq!(run.data.tags[1].value, "");
        assert_eq!(run.info.start_time, Some(1_500_000_000_000));
        assert_eq!(run.info.end_time, None);
        let values: Vec<f64> = run.data.metrics.iter().map(|m| m.value).collect();
        assert_eq!(values[..2], [3.0, f64::INFINITY]);
        assert!(values[2].is_nan());
        // proto3 JSON leaves a 0.0 out.
        assert_eq!(values[3], 0.0);
        assert_eq!(run.inputs.dataset_inputs.len(), 2);
        assert_eq!(r.next_page_token, None);
    }

    #[test]
    fn times_in_any_json_form() {
        let time = |v: &str| {
            let text = format!(r#"{{"run_id":"a","experiment_id":"1","start_time":{v}}}"#);
            serde_json::from_str::<RunInfo>(&text).map(|i| i.start_time)
        };
        assert_eq!(time("1700000000000").unwrap(), Some(1_700_000_000_000));
        assert_eq!(time("-5").unwrap(), Some(-5));
        assert_eq!(time(r#""1700000000000""#).unwrap(), Some(1_700_000_000_000));
        assert_eq!(time("18446744073709551615").unwrap(), Some(i64::MAX));
        assert_eq!(time("1.5").unwrap(), Some(1));
        assert_eq!(time("null").unwrap(), None);
        assert!(time(r#""soon""#).is_err());
        assert!(time("true").is_err());
        assert!(time("[1]").is_err());
    }

    #[test]
    fn empty_search_answers_are_empty_pages() {
        let r: SearchRunsResponse = serde_json::from_str("{}").unwrap();
        assert!(r.runs.is_empty() && r.next_page_token.is_none());
    }
}
