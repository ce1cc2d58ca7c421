//! One HTTP probe of an endpoint, measured from outside: how long the whole answer took, its status,
//! whether it is what was expected, why not (a bounded `reason`), and when the server's certificate
//! expires. Keeps no state between probes; `crate::probes` schedules them and keeps the history.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use crate::config::probes::{ProbeSpec, MLFLOW_PROBE};
use crate::config::{MlflowSettings, Secret};
use crate::error::ConfigError;
use crate::source::http::{self, error_chain, is_tls_error};

/// At most this much of an answer is kept to check it; the rest is read and dropped.
const BODY_CHECK_LIMIT: usize = 1 << 20;

/// Why a probe failed: the `reason` label of `mlflow_probe_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    Connect,
    Tls,
    Status,
    Body,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Tls,
        Reason::Status,
        Reason::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Status => "status",
            Reason::Body => "body",
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Wall-clock start, Unix milliseconds.
    pub at_ms: i64,
    /// From sending the request to the end of the answer (or the failure).
    pub seconds: f64,
    /// Status of the answer, if one came.
    pub status: Option<u16>,
    pub failure: Option<Reason>,
    /// What went wrong, for the log; never holds header values (the URL is left out too).
    pub detail: String,
    /// `notAfter` of the server's certificate (Unix seconds), when the probe spoke TLS.
    pub cert_not_after: Option<i64>,
}

/// What a successful answer looks like.
struct Expect {
    status: Vec<u16>,
    body_contains: Option<String>,
    json_path: Option<serde_json_path::JsonPath>,
}

/// A ready-to-send probe of one endpoint.
pub struct Prober {
    pub name: String,
    http: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    expect: Expect,
    timeout: Duration,
}

impl Prober {
    /// Builds a configured probe: header values are read now (from the environment or files).
    pub fn new(spec: &ProbeSpec) -> Result<Prober, ConfigError> {
        let p = &spec.probe;
        let bad = |why: String| ConfigError::new(format!("probe {:?}", p.name), why);
        let mut headers = HeaderMap::new();
        for (name, source) in &p.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(format!("header name {name:?} is not valid")))?,
                sensitive(&source.resolve(name).map_err(bad)?).ok_or_else(|| {
                    bad(format!("the value of header {name} is not valid in HTTP"))
                })?,
            );
        }
        let body = match &p.body {
            Some(v) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(Bytes::from(
                    serde_json::to_vec(v).map_err(|e| bad(e.to_string()))?,
                ))
            }
            None => None,
        };
        let url = reqwest::Url::parse(&p.url).map_err(|e| bad(format!("url: {e}")))?;
        let b =
            client_builder(spec.timeout).danger_accept_invalid_certs(p.tls.insecure_skip_verify);
        let files = [p.tls.ca_file.as_deref(), p.tls.cert_file.as_deref()];
        let client = http::with_tls_files(b, files[0], files[1])
            .and_then(|b| http::build(b, &files))
            .map_err(bad)?;
        let json_path = match &p.expect.json_path {
            Some(path) => Some(
                serde_json_path::JsonPath::parse(path)
                    .map_err(|e| bad(format!("expect.json_path: {e}")))?,
            ),
            None => None,
        };
        Ok(Prober {
            name: p.name.clone(),
            http: client,
            method: spec.method.clone(),
            url,
            headers,
            body,
            expect: Expect {
                status: p.expect.status.clone(),
                body_contains: p.expect.body_contains.clone(),
                json_path,
            },
            timeout: spec.timeout,
        })
    }

    /// The built-in probe of the tracking server's `/health`, with MLflow's credentials and TLS files.
    pub fn mlflow(
        s: &MlflowSettings,
        timeout: Duration,
    ) -> Result<Prober, crate::error::MlflowError> {
        let connection = crate::source::mlflow::Connection::new(s)?;
        let client = connection.client(client_builder(timeout))?;
        let url = reqwest::Url::parse(&connection.url("health"))
            .map_err(|e| crate::error::MlflowError::Setup(format!("MLflow health URL: {e}")))?;
        let mut headers = HeaderMap::new();
        if let Some(v) = connection.authorization() {
            headers.insert(reqwest::header::AUTHORIZATION, v.clone());
        }
        Ok(Prober {
            name: MLFLOW_PROBE.into(),
            http: client,
            method: reqwest::Method::GET,
            url,
            headers,
            body: None,
            expect: Expect {
                status: Vec::new(),
                body_contains: None,
                json_path: None,
            },
            timeout,
        })
    }

    /// Sends the probe and judges the answer. Never fails: every problem is an [`Outcome`].
    pub async fn probe(&self) -> Outcome {
        let at_ms = chrono::Utc::now().timestamp_millis();
        let start = Instant::now();
        let mut req = self
            .http
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(b) = &self.body {
            req = req.body(b.clone());
        }
        let mut out = Outcome {
            at_ms,
            seconds: 0.0,
            status: None,
            failure: None,
            detail: String::new(),
            cert_not_after: None,
        };
        let result = match req.send().await {
            Ok(mut resp) => {
                out.status = Some(resp.status().as_u16());
                out.cert_not_after = resp
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|t| t.peer_certificate())
                    .and_then(not_after);
                let mut kept = Vec::new();
                let mut read = Ok(());
                loop {
                    match resp.chunk().await {
                        Ok(Some(c)) => {
                            let room = BODY_CHECK_LIMIT.saturating_sub(kept.len());
                            kept.extend_from_slice(&c[..c.len().min(room)]);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
                read.map(|()| self.judge(resp.status().as_u16(), &kept))
            }
            Err(e) => Err(e),
        };
        out.seconds = start.elapsed().as_secs_f64();
        match result {
            Ok(Ok(())) => {}
            Ok(Err((reason, detail))) => {
                out.failure = Some(reason);
                out.detail = detail;
            }
            Err(e) => {
                let e = e.without_url();
                out.failure = Some(if e.is_timeout() {
                    Reason::Timeout
                } else if is_tls_error(&e) {
                    Reason::Tls
                } else {
                    Reason::Connect
                });
                out.detail = error_chain(&e);
            }
        }
        out
    }

    /// Whether an answer is what was expected.
    fn judge(&self, status: u16, body: &[u8]) -> Result<(), (Reason, String)> {
        let ok = if self.expect.status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.status.contains(&status)
        };
        if !ok {
            return Err((Reason::Status, format!("unexpected status {status}")));
        }
        if let Some(s) = &self.expect.body_contains {
            if !s.is_empty() && !body.windows(s.len()).any(|w| w == s.as_bytes()) {
                return Err((Reason::Body, format!("the answer does not contain {s:?}")));
            }
        }
        if let Some(path) = &self.expect.json_path {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| (Reason::Body, format!("the answer is not JSON: {e}")))?;
            if path.query(&v).is_empty() {
                return Err((
                    Reason::Body,
                    format!("{path} selects nothing in the answer"),
                ));
            }
        }
        Ok(())
    }
}

fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_info(true)
        .connect_timeout(timeout)
        .user_agent(concat!(
            "mlflow-exporter/",
            env!("CARGO_PKG_VERSION"),
            " (probe)"
        ))
}

/// A header value that reqwest and hyper never print.
fn sensitive(s: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(s.expose()).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// `notAfter` of a DER certificate, Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}
