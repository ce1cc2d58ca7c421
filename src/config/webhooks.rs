//! Receivers of delivery events pushed to the exporter: `webhooks.*` (MLflow, Alertmanager, CI/CD).

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError, Secret};

/// Receivers of delivery events pushed to the exporter.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// MLflow's webhook (`POST /api/v1/webhooks/mlflow`): alias moves at the time MLflow made them.
    pub mlflow: MlflowReceiver,
    /// Alertmanager's webhook (`POST /api/v1/webhooks/alertmanager`): firing alerts open incidents.
    pub alertmanager: Receiver,
    /// CI/CD events (`POST /api/v1/events`): deployments and incidents.
    pub events: Receiver,
    /// Label (of an alert) naming the model an incident is attributed to.
    pub model_label: String,
    /// Label (of an alert) giving an incident's severity.
    pub severity_label: String,
    /// Severities every served model's incident series exist for from the start (at 0), so the
    /// first incident is an increase `increase()` sees. Others get series when they happen.
    pub severities: Vec<String>,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Requests a second each client address may make to each receiver; more get 429 with
    /// `Retry-After` (before the token or the body is looked at).
    pub rate_limit: u32,
    /// Requests a client may make at once above the rate (bursts of a retrying sender).
    pub rate_burst: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            mlflow: MlflowReceiver::default(),
            alertmanager: Receiver::default(),
            events: Receiver::default(),
            model_label: "model".into(),
            severity_label: "severity".into(),
            severities: vec!["critical".into(), "warning".into()],
            max_body_bytes: 1 << 20,
            rate_limit: 20,
            rate_burst: 100,
        }
    }
}

/// MLflow's webhook receiver: every delivery must carry a valid `X-MLflow-Signature` made with
/// `secret` (set it, and the same secret on the webhook, e.g. with `register-webhook`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowReceiver {
    pub enabled: bool,
    pub secret: Option<Secret>,
    /// A bearer token besides the signature, for proxies that check one.
    pub token: Option<Secret>,
}

/// One webhook receiver: off unless enabled; with a token, requests must carry `Authorization: Bearer`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Receiver {
    pub enabled: bool,
    pub token: Option<Secret>,
}

impl WebhookSettings {
    /// Rate limits are at least 1; MLflow's receiver has its secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return bad(
                "webhooks.rate_limit",
                "rate_limit and rate_burst must be at least 1".into(),
            );
        }
        if self.mlflow.enabled
            && self
                .mlflow
                .secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
        {
            return bad(
                "webhooks.mlflow.secret",
                "required when webhooks.mlflow.enabled: deliveries are verified with it".into(),
            );
        }
        Ok(())
    }
}
