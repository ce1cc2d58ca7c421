//! The rate card that prices run time and tokens: `cost.*`.

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError};

/// The rate card that prices run time.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostSettings {
    /// Currency of `mlflow_run_cost_total` (documentation only; the number is in this currency).
    pub currency: String,
    /// Hourly rate of a run no rate matches.
    pub default_hourly_rate: f64,
    /// Run tag whose value is the `instance_type` label.
    pub instance_type_tag: String,
    /// Rates, first match wins.
    pub rates: Vec<Rate>,
    /// Prices of the LLM calls MLflow does not price (a model served in-house, one missing from
    /// its price table), per model a span names: `mlflow_trace_rated_cost_total`, in `currency`.
    pub token_rates: Vec<TokenRate>,
}

/// The price of one model's tokens, per million.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenRate {
    /// The model as a span names it (`mlflow.llm.model`), exactly.
    pub model: String,
    pub input: f64,
    pub output: f64,
}

impl Default for CostSettings {
    fn default() -> Self {
        CostSettings {
            currency: "USD".into(),
            default_hourly_rate: 0.0,
            instance_type_tag: "instance_type".into(),
            rates: Vec::new(),
            token_rates: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    #[serde(rename = "match")]
    pub matcher: RateMatch,
    pub hourly_rate: f64,
    /// GPUs of the instance; when unset, the GPUs a run's system metrics show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

/// Which runs a rate applies to: a tag or param equal to `value` or matching `regex`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl CostSettings {
    /// Prices are numbers ≥ 0, each model priced once, each match well formed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.default_hourly_rate.is_finite() || self.default_hourly_rate < 0.0 {
            return bad("cost.default_hourly_rate", "must be a number ≥ 0".into());
        }
        for (i, r) in self.token_rates.iter().enumerate() {
            let key = format!("cost.token_rates[{i}]");
            if r.model.is_empty() {
                return bad(
                    &key,
                    "model must name the model as spans do (mlflow.llm.model)".into(),
                );
            }
            if [r.input, r.output]
                .iter()
                .any(|p| !p.is_finite() || *p < 0.0)
            {
                return bad(
                    &key,
                    "input and output must be prices ≥ 0 per million tokens".into(),
                );
            }
            if self.token_rates[..i].iter().any(|o| o.model == r.model) {
                return bad(&key, format!("model {:?} is priced twice", r.model));
            }
        }
        for (i, r) in self.rates.iter().enumerate() {
            let key = format!("cost.rates[{i}]");
            if !r.hourly_rate.is_finite() || r.hourly_rate < 0.0 {
                return bad(&key, "hourly_rate must be a number ≥ 0".into());
            }
            let m = &r.matcher;
            if m.tag.is_some() == m.param.is_some() {
                return bad(&key, "match needs exactly one of tag or param".into());
            }
            if m.value.is_some() == m.regex.is_some() {
                return bad(&key, "match needs exactly one of value or regex".into());
            }
            if let Some(re) = &m.regex {
                regex::Regex::new(re).map_err(|e| {
                    ConfigError::new(&key, format!("regex {re:?} does not compile: {e}"))
                })?;
            }
        }
        Ok(())
    }
}
