//! The `probes:` section: HTTP endpoints (model servers, MLflow's `/health`) the exporter measures
//! from outside, as blackbox_exporter does, with `model` and `alias` labels that tie them to the
//! registry. Header values can come from the environment or a file and never print.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;
use crate::error::ConfigError;

/// Name of the built-in probe of the tracking server.
pub const MLFLOW_PROBE: &str = "mlflow";

/// Probes and their defaults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSettings {
    /// Probe the tracking server's `/health` as probe `mlflow`, with MLflow's credentials and TLS settings.
    pub mlflow_health: bool,
    /// Default time between two probes of one target.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Default time a probe may take, connection included; at most the interval.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Default number of consecutive failures that make an outage.
    pub failures_before_down: u32,
    /// Buckets of `mlflow_probe_duration_seconds`, in seconds.
    pub duration_buckets: Vec<f64>,
    /// How often uptime totals are saved to the store; outages are saved when they open and close.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The endpoints to probe.
    pub targets: Vec<Probe>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            mlflow_health: true,
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            failures_before_down: 1,
            duration_buckets: vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
            checkpoint_interval: Duration::from_secs(60),
            targets: Vec::new(),
        }
    }
}

/// One endpoint, e.g. a model server's `/invocations` with a small payload.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The `probe` label; unique.
    pub name: String,
    pub url: String,
    /// HTTP method; `POST` when a body is set, else `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers; a value is a string, `{env: VARIABLE}` or `{file: /path}` (read at start).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderSource>,
    /// A JSON body (sent with `Content-Type: application/json`), e.g. `{inputs: [[1.0, 2.0]]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub expect: Expect,
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_down: Option<u32>,
    /// Registered model the endpoint serves (the `model` label).
    #[serde(default)]
    pub model: String,
    /// Alias the endpoint serves (the `alias` label).
    #[serde(default)]
    pub alias: String,
    /// On a workspace-enabled MLflow 3, the workspace of `model` (the `workspace` label, so that
    /// the probe's series join the registry's and an alert names the workspace's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default)]
    pub tls: ProbeTls,
}

/// What a successful answer looks like.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expect {
    /// Accepted status codes; any 2xx when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// A string the body must contain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// A JSONPath (RFC 9535) that must select at least one value of the JSON body, e.g. `$.predictions[0]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
}

/// TLS of one probe; the system's roots verify the server unless `ca_file` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeTls {
    /// CA bundle (PEM) to verify the server with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key in one PEM file, for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Accept any certificate (self-signed, expired); its expiry is still reported.
    pub insecure_skip_verify: bool,
}

/// Where a header's value comes from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderSource {
    Value(Secret),
    Env { env: String },
    File { file: PathBuf },
}

impl HeaderSource {
    /// The value, read now from the process environment or the file (its last newline dropped).
    pub fn resolve(&self, header: &str) -> Result<Secret, String> {
        match self {
            HeaderSource::Value(s) => Ok(s.clone()),
            HeaderSource::Env { env } => std::env::var(env)
                .map(Secret::new)
                .map_err(|_| format!("header {header}: environment variable {env} is not set")),
            HeaderSource::File { file } => std::fs::read_to_string(file)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
                .map_err(|e| format!("header {header}: cannot read {}: {e}", file.display())),
        }
    }
}

/// A probe with every default applied.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    pub probe: Probe,
    pub method: reqwest::Method,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures_before_down: u32,
}

impl ProbeSettings {
    /// The configured targets with defaults applied, checked.
    pub fn specs(&self) -> Result<Vec<ProbeSpec>, ConfigError> {
        let mut out: Vec<ProbeSpec> = Vec::with_capacity(self.targets.len());
        for (i, p) in self.targets.iter().enumerate() {
            let key = format!("probes.targets[{i}]");
            let bad = |why: String| ConfigError::new(format!("{key} ({})", p.name), why);
            if p.name.is_empty() {
                return Err(bad("name is empty".into()));
            }
            if out.iter().any(|o| o.probe.name == p.name)
                || (self.mlflow_health && p.name == MLFLOW_PROBE)
            {
                return Err(bad(format!(
                    "name {:?} is used twice (the built-in MLflow probe is {MLFLOW_PROBE:?} unless probes.mlflow_health is false)",
                    p.name
                )));
            }
            match url::Url::parse(&p.url) {
                // Credentials in a URL would end up in logs: they belong in a header.
                Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                    return Err(bad(
                        "url holds credentials; send them in a header (headers: {Authorization: {env: VAR}})".into(),
                    ))
                }
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                // Parsed, it holds no credentials (checked above) and can be shown; unparsed, it may.
                Ok(_) => return Err(bad(format!("url {:?} is not an http(s) URL", p.url))),
                Err(e) => return Err(bad(format!("url is not a valid URL: {e}"))),
            }
            let method = match &p.method {
                Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| bad(format!("method {m:?} is not an HTTP method")))?,
                None if p.body.is_some() => reqwest::Method::POST,
                None => reqwest::Method::GET,
            };
            for name in p.headers.keys() {
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(format!("header name {name:?} is not valid")))?;
            }
            if let Some(path) = &p.expect.json_path {
                serde_json_path::JsonPath::parse(path)
                    .map_err(|e| bad(format!("expect.json_path {path:?}: {e}")))?;
            }
            if let Some(s) = p.expect.status.iter().find(|s| !(100..=599).contains(*s)) {
                return Err(bad(format!("expect.status {s} is not an HTTP status")));
            }
            let spec = ProbeSpec {
                method,
                interval: p.interval.unwrap_or(self.interval),
                timeout: p.timeout.unwrap_or(self.timeout),
                failures_before_down: p.failures_before_down.unwrap_or(self.failures_before_down),
                probe: p.clone(),
            };
            spec.check().map_err(bad)?;
            out.push(spec);
        }
        Ok(out)
    }

    /// Checks the section (the targets, the defaults and the buckets).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let defaults = ProbeSpec {
            probe: Probe::get(MLFLOW_PROBE, "http://localhost/health"),
            method: reqwest::Method::GET,
            interval: self.interval,
            timeout: self.timeout,
            failures_before_down: self.failures_before_down,
        };
        defaults
            .check()
            .map_err(|why| ConfigError::new("probes", why))?;
        if self.checkpoint_interval.is_zero() {
            return Err(ConfigError::new(
                "probes.checkpoint_interval",
                "must be greater than zero",
            ));
        }
        super::check_buckets("probes.duration_buckets", &self.duration_buckets)?;
        self.specs().map(|_| ())
    }
}

impl ProbeSpec {
    fn check(&self) -> Result<(), String> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("interval and timeout must be greater than zero".into());
        }
        if self.timeout > self.interval {
            return Err(format!(
                "timeout {:?} is longer than the interval {:?}; a probe must end before the next one starts",
                self.timeout, self.interval
            ));
        }
        if self.failures_before_down == 0 {
            return Err("failures_before_down must be at least 1".into());
        }
        Ok(())
    }
}

impl Probe {
    /// A plain GET probe with no expectations beyond a 2xx.
    pub fn get(name: &str, url: &str) -> Probe {
        Probe {
            name: name.into(),
            url: url.into(),
            method: None,
            headers: BTreeMap::new(),
            body: None,
            expect: Expect::default(),
            timeout: None,
            interval: None,
            failures_before_down: None,
            model: String::new(),
            workspace: None,
            alias: String::new(),
            tls: ProbeTls::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load;

    #[test]
    fn a_probe_gets_the_defaults_and_keeps_its_body_as_written() {
        let s = load(
            "probes:\n  interval: 10s\n  failures_before_down: 3\n  targets:\n  - name: churn\n    url: http://churn:8080/invocations\n    body: {dataframe_split: {columns: [sepalLength], data: [[1.5]]}}\n    headers: {Authorization: 'Bearer lit-secret-1', X-Key: {env: KEY_VAR}}\n    timeout: 2s\n    model: churn\n    alias: champion\n",
        )
        .unwrap();
        assert!(s.probes.mlflow_health);
        let specs = s.probes.specs().unwrap();
        assert_eq!(specs.len(), 1);
        let p = &specs[0];
        assert_eq!(p.method, reqwest::Method::POST);
        assert_eq!(p.interval, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.failures_before_down, 3);
        // Keys keep their case: a model's column names are case-sensitive.
        assert_eq!(
            p.probe.body.as_ref().unwrap().to_string(),
            r#"{"dataframe_split":{"columns":["sepalLength"],"data":[[1.5]]}}"#
        );
        let printed = s.to_redacted_yaml();
        assert!(!printed.contains("lit-secret-1"), "{printed}");
        assert!(
            printed.contains("Authorization: <redacted>") && printed.contains("env: KEY_VAR"),
            "{printed}"
        );
    }

    #[test]
    fn bad_probes_are_refused_with_the_key_and_the_fix() {
        let target = |extra: &str| {
            format!("probes:\n  targets:\n  - name: churn\n    url: http://churn:8080/invocations\n{extra}")
        };
        for (yaml, expected) in [
            (
                target("    timeout: 20s\n"),
                "probes.targets[0] (churn): timeout 20s is longer than the interval 15s",
            ),
            (
                target("    failures_before_down: 0\n"),
                "probes.targets[0] (churn): failures_before_down must be at least 1",
            ),
            (
                target("    method: 'BAD METHOD'\n"),
                "probes.targets[0] (churn): method \"BAD METHOD\" is not an HTTP method",
            ),
            (
                target("    expect: {json_path: 'predictions'}\n"),
                "probes.targets[0] (churn): expect.json_path \"predictions\"",
            ),
            (
                target("    expect: {status: [42]}\n"),
                "probes.targets[0] (churn): expect.status 42 is not an HTTP status",
            ),
            (
                "probes:\n  targets:\n  - {name: mlflow, url: 'http://x/'}\n".into(),
                "name \"mlflow\" is used twice",
            ),
            (
                "probes:\n  targets:\n  - {name: a, url: 'http://u:pw@x/'}\n".into(),
                "url holds credentials; send them in a header",
            ),
            (
                "probes:\n  targets:\n  - {name: a, url: 'ftp://x/'}\n".into(),
                "url \"ftp://x/\" is not an http(s) URL",
            ),
            (
                "probes:\n  timeout: 0s\n".into(),
                "probes: interval and timeout must be greater than zero",
            ),
            (
                "probes:\n  duration_buckets: [1, 0.5]\n".into(),
                "probes.duration_buckets: must be a non-empty list",
            ),
        ] {
            let err = load(&yaml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {yaml}"))
                .to_string();
            assert!(err.contains(expected), "{yaml}\n→ {err}");
        }
        // The built-in probe's name is free when it is off.
        assert!(load(
            "probes:\n  mlflow_health: false\n  targets:\n  - {name: mlflow, url: 'http://x/'}\n"
        )
        .is_ok());
    }
}
