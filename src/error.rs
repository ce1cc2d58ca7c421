//! The library's error types. Each variant says what failed and what to do, and maps to a bounded
//! `reason` label for `mlflow_exporter_sync_errors_total`.

use std::time::Duration;

use thiserror::Error;

/// A configuration that cannot be used: the key at fault (with the probe it belongs to, for a
/// probe's; empty when the file as a whole cannot be read) and why, with what to do.
#[derive(Debug, Error)]
#[error("invalid configuration: {}{why}", match key.is_empty() { true => String::new(), false => format!("{key}: ") })]
pub struct ConfigError {
    pub key: String,
    pub why: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// A failed call to MLflow.
#[derive(Debug, Error)]
pub enum MlflowError {
    #[error("cannot connect to MLflow at {endpoint}: {detail}; check that the tracking server is up and MLFLOW_TRACKING_URI is right")]
    Connect {
        endpoint: &'static str,
        detail: String,
    },
    #[error("TLS with MLflow failed at {endpoint}: {detail}; check the CA bundle (MLFLOW_TRACKING_SERVER_CERT_PATH) and the client certificate (MLFLOW_TRACKING_CLIENT_CERT_PATH)")]
    Tls {
        endpoint: &'static str,
        detail: String,
    },
    #[error("MLflow did not answer {endpoint} within {timeout:?}; raise mlflow.timeout or check the server's load")]
    Timeout {
        endpoint: &'static str,
        timeout: Duration,
    },
    #[error("MLflow answered {endpoint} with HTTP {status} {error_code}: {message}{hint}")]
    Status {
        endpoint: &'static str,
        status: u16,
        error_code: String,
        message: String,
        hint: &'static str,
    },
    #[error("MLflow's answer to {endpoint} is not the JSON expected: {detail}")]
    Decode {
        endpoint: &'static str,
        detail: String,
    },
    #[error(
        "MLflow's answer to {endpoint} repeats page token {token:?}; stopping instead of looping"
    )]
    PageLoop {
        endpoint: &'static str,
        token: String,
    },
    #[error("MLflow's answer to {endpoint} is larger than {limit} bytes; lower mlflow.page_size or raise mlflow.max_response_bytes")]
    TooLarge {
        endpoint: &'static str,
        limit: usize,
    },
    #[error("cannot set up the HTTP client for MLflow: {0}")]
    Setup(String),
}

impl MlflowError {
    /// A bounded label value for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            MlflowError::Connect { .. } => "connect",
            MlflowError::Tls { .. } => "tls",
            MlflowError::Timeout { .. } => "timeout",
            MlflowError::Status { status, .. } if *status == 401 || *status == 403 => "auth",
            MlflowError::Status { status, .. } if *status >= 500 || *status == 429 => {
                "server_error"
            }
            MlflowError::Status { .. } => "client_error",
            MlflowError::Decode { .. } | MlflowError::PageLoop { .. } => "decode",
            MlflowError::TooLarge { .. } => "too_large",
            MlflowError::Setup(_) => "setup",
        }
    }

    /// Every value [`reason`](Self::reason) can return, so counters start at 0.
    pub const REASONS: &'static [&'static str] = &[
        "connect",
        "tls",
        "timeout",
        "auth",
        "server_error",
        "client_error",
        "decode",
        "too_large",
        "setup",
    ];
}
