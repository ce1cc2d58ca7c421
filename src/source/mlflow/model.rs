//! Wire types of the MLflow REST responses the exporter reads, lenient where MLflow is loose
//! (int64 as number or string, NaN metrics as strings, absent lists).

use serde::{Deserialize, Deserializer};

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

#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
    #[serde(default)]
    pub inputs: RunInputs,
}

/// Only whether a run logged dataset inputs matters, not what they were.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunInputs {
    #[serde(default)]
    pub dataset_inputs: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub lifecycle_stage: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunData {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// The latest value of one metric key of a run.
#[derive(Debug, Clone, Deserialize)]
pub struct Metric {
    pub key: String,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub value: f64,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchRunsResponse {
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default)]
    pub next_page_token: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchModelVersionsResponse {
    #[serde(default)]
    pub model_versions: Vec<ModelVersion>,
    #[serde(default)]
    pub next_page_token: Option<String>,
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
page!(SearchRunsResponse, runs, Run);
page!(
    SearchRegisteredModelsResponse,
    registered_models,
    RegisteredModel
);
page!(SearchModelVersionsResponse, model_versions, ModelVersion);

/// int64 fields arrive as JSON numbers, or as strings from proto-JSON encoders.
fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        I(i64),
        F(f64),
        S(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => None,
        Some(N::I(i)) => Some(i),
        Some(N::F(f)) if f.is_finite() => Some(f as i64),
        Some(N::F(_)) => None,
        Some(N::S(s)) => Some(s.parse().map_err(serde::de::Error::custom)?),
    })
}

/// Metric values may be `"NaN"` or `"Infinity"` strings.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        F(f64),
        S(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        None => f64::NAN,
        Some(N::F(f)) => f,
        Some(N::S(s)) => s.parse().unwrap_or(f64::NAN),
    })
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
        let (runs, next) = r.into_parts();
        assert_eq!(next, None);
        assert_eq!(runs[0].info.start_time, Some(1_700_000_000_000));
        assert_eq!(runs[0].info.end_time, None);
        assert!(runs[0].data.metrics[0].value.is_nan());
        assert_eq!(runs[0].data.metrics[1].value, 0.5);
        assert!(runs[0].data.tags.is_empty());
    }

    #[test]
    fn empty_search_answers_are_empty_pages() {
        let r: SearchRunsResponse = serde_json::from_str("{}").unwrap();
        assert!(r.runs.is_empty() && r.next_page_token.is_none());
    }
}
