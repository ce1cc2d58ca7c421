//! How to reach MLflow: the tracking server's URL (parsed once), its credentials and TLS files.
//! The REST client (and so `register-webhook`) and the health probe both start here, so that "Basic
//! wins over Bearer", the TLS files and the URL's form are decided in one place.

use std::path::PathBuf;

use reqwest::header::HeaderValue;

use crate::config::{MlflowSettings, Secret};
use crate::error::MlflowError;
use crate::source::http;

#[derive(Clone)]
pub struct Connection {
    /// The tracking URI without a trailing slash.
    base: String,
    /// The `Authorization` header, marked sensitive so that neither reqwest nor hyper prints it.
    authorization: Option<HeaderValue>,
    ca: Option<PathBuf>,
    identity: Option<PathBuf>,
    insecure_tls: bool,
}

impl Connection {
    pub fn new(s: &MlflowSettings) -> Result<Connection, MlflowError> {
        let url = reqwest::Url::parse(s.tracking_uri.trim())
            .map_err(|e| MlflowError::Setup(format!("mlflow.tracking_uri is not a URL: {e}")))?;
        // As in MLflow's client: Basic wins when both a user and a token are set.
        let authorization = match (&s.username, &s.password, &s.token) {
            (Some(user), pw, _) => {
                use base64::Engine as _;
                let pair = format!("{user}:{}", pw.as_ref().map(Secret::expose).unwrap_or(""));
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(header(&format!("Basic {encoded}"))?)
            }
            (None, _, Some(t)) => Some(header(&format!("Bearer {}", t.expose()))?),
            _ => None,
        };
        Ok(Connection {
            base: url.as_str().trim_end_matches('/').to_string(),
            authorization,
            ca: s.server_cert_path.clone(),
            identity: s.client_cert_path.clone(),
            insecure_tls: s.insecure_tls,
        })
    }

    /// `path` (no leading slash) under the tracking URI.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The `Authorization` header to send, if MLflow was given credentials.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// Builds a client from `b` with MLflow's TLS: its CA bundle, client certificate and
    /// `MLFLOW_TRACKING_INSECURE_TLS`. The error names the file and what is wrong with it.
    pub fn client(&self, b: reqwest::ClientBuilder) -> Result<reqwest::Client, MlflowError> {
        let b = b.danger_accept_invalid_certs(self.insecure_tls);
        let files = [self.ca.as_deref(), self.identity.as_deref()];
        http::with_tls_files(b, files[0], files[1])
            .and_then(|b| http::build(b, &files))
            .map_err(MlflowError::Setup)
    }
}

/// A sensitive header value; a credential that is no header value is a setup error (without it).
fn header(value: &str) -> Result<HeaderValue, MlflowError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        MlflowError::Setup(
            "MLflow's credentials hold characters an HTTP header cannot carry; check MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and MLFLOW_TRACKING_TOKEN".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}
