//! Configuration: the YAML file, environment variables (MLflow's own `MLFLOW_TRACKING_*` among them) and
//! command-line flags, merged in that order of precedence into one validated [`Settings`].
//! The doc comments on the structs are the configuration reference; secrets print as `<redacted>`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::ConfigError;

pub mod cost;
pub mod delivery;
pub mod log;
pub mod metrics;
pub mod mlflow;
pub mod probes;
pub mod storage;
pub mod web;
pub mod webhooks;
pub use cost::{CostSettings, Rate, RateMatch, TokenRate};
pub use delivery::DeliverySettings;
pub use log::{LogFormat, LogLevel, LogSettings};
pub use metrics::{ExtraLabel, Feature, Goal, MetricsSettings, QualityMetric, MAX_FEATURES};
pub use mlflow::{MlflowSettings, WorkspaceSelection};
pub use probes::ProbeSettings;
pub use storage::StorageSettings;
pub use web::{parse_listen_address, WebSettings};
pub use webhooks::{MlflowReceiver, Receiver, WebhookSettings};

/// Default port: from the 9100–9999 range Prometheus exporters use.
pub const DEFAULT_PORT: u16 = 9868;

/// A value that must never be printed or logged (passwords, tokens).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that sends it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Everything the exporter can be told.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub mlflow: MlflowSettings,
    pub web: WebSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub cost: CostSettings,
    pub storage: StorageSettings,
    pub delivery: DeliverySettings,
    pub webhooks: WebhookSettings,
    pub probes: ProbeSettings,
}

pub(crate) mod humantime_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Clone, Debug, Default)]
pub struct FlagOverrides {
    pub listen_address: Option<String>,
    pub telemetry_path: Option<String>,
    pub web_config_file: Option<String>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub tracking_uri: Option<String>,
    pub sync_interval: Option<String>,
    pub full_resync_interval: Option<String>,
    pub storage_path: Option<String>,
}

/// MLflow client variables and the settings keys they set.
const MLFLOW_ENV: &[(&str, &str)] = &[
    ("MLFLOW_TRACKING_URI", "mlflow.tracking_uri"),
    ("MLFLOW_TRACKING_TOKEN", "mlflow.token"),
    ("MLFLOW_TRACKING_USERNAME", "mlflow.username"),
    ("MLFLOW_TRACKING_PASSWORD", "mlflow.password"),
    (
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "mlflow.server_cert_path",
    ),
    (
        "MLFLOW_TRACKING_CLIENT_CERT_PATH",
        "mlflow.client_cert_path",
    ),
];

/// Prefix of the exporter's own variables: `MLFLOW_EXPORTER_MLFLOW__SYNC_INTERVAL=30s`.
const EXPORTER_ENV_PREFIX: &str = "MLFLOW_EXPORTER";

impl Settings {
    /// Merges file < environment < flags. `env` is passed in so tests need not touch the process environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &HashMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Settings, ConfigError> {
        match file {
            Some(path) if !path.exists() => Err(ConfigError::new(
                "--config.file",
                format!(
                    "config file {} does not exist; pass an existing YAML file",
                    path.display()
                ),
            )),
            Some(path) => Settings::load_from(
                Some(
                    config::File::from(path)
                        .format(config::FileFormat::Yaml)
                        .required(true),
                ),
                env,
                flags,
            ),
            None => Settings::load_from(
                None::<config::File<config::FileSourceString, config::FileFormat>>,
                env,
                flags,
            ),
        }
    }

    /// As [`Settings::load`], with the YAML given as text (the fuzz target of the config file).
    pub fn from_yaml(
        yaml: &str,
        env: &HashMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Settings, ConfigError> {
        let file = config::File::from_str(yaml, config::FileFormat::Yaml);
        Settings::load_from(Some(file), env, flags)
    }

    fn load_from<S: config::Source + Send + Sync + 'static>(
        file: Option<S>,
        env: &HashMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        builder = builder.add_source(
            config::Environment::with_prefix(EXPORTER_ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(
                    env.iter()
                        .filter(|(k, _)| is_settings_variable(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )),
        );
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>,
                   key: &str,
                   value: Option<String>| {
            b.set_override_option(key, value)
                .map_err(|e| ConfigError::new(key, e.to_string()))
        };
        for (var, key) in MLFLOW_ENV {
            builder = set(
                builder,
                key,
                env.get(*var).filter(|v| !v.is_empty()).cloned(),
            )?;
        }
        // MLflow's client treats only the exact string "true" as disabling verification.
        if let Some(v) = env.get("MLFLOW_TRACKING_INSECURE_TLS") {
            builder = set(
                builder,
                "mlflow.insecure_tls",
                Some((v == "true").to_string()),
            )?;
        }
        builder = set(builder, "web.listen_address", flags.listen_address.clone())?;
        builder = set(builder, "web.telemetry_path", flags.telemetry_path.clone())?;
        builder = set(builder, "web.config_file", flags.web_config_file.clone())?;
        builder = set(builder, "log.level", flags.log_level.map(|l| enum_name(&l)))?;
        builder = set(
            builder,
            "log.format",
            flags.log_format.map(|f| enum_name(&f)),
        )?;
        builder = set(builder, "mlflow.tracking_uri", flags.tracking_uri.clone())?;
        builder = set(builder, "mlflow.sync_interval", flags.sync_interval.clone())?;
        builder = set(
            builder,
            "mlflow.full_resync_interval",
            flags.full_resync_interval.clone(),
        )?;
        builder = set(builder, "storage.path", flags.storage_path.clone())?;
        let merged = builder
            .build()
            .map_err(|e| ConfigError::new("", e.to_string()))?;
        let mut settings: Settings = merged
            .try_deserialize()
            .map_err(|e| ConfigError::new("", e.to_string()))?;
        settings.mlflow.take_url_credentials();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: values that parse but make no sense together, one section at a
    /// time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mlflow.validate()?;
        self.web.validate()?;
        self.webhooks.validate()?;
        self.delivery.validate()?;
        self.metrics.validate()?;
        self.probes.validate()?;
        self.cost.validate()
    }

    /// The effective configuration as YAML, secrets redacted (for `check-config`).
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// The sections of [`Settings`], as the YAML file and `MLFLOW_EXPORTER_<SECTION>__<KEY>` name them.
pub const SECTIONS: [&str; 9] = [
    "mlflow", "web", "log", "metrics", "cost", "storage", "delivery", "webhooks", "probes",
];

/// `MLFLOW_EXPORTER_<SECTION>__<KEY>` for a known section. Other variables with the prefix are left
/// alone: Kubernetes, for one, sets `MLFLOW_EXPORTER_SERVICE_HOST` for a Service of that name.
fn is_settings_variable(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(EXPORTER_ENV_PREFIX)
        .and_then(|r| r.strip_prefix('_'))
    else {
        return false;
    };
    let Some((section, _)) = rest.split_once("__") else {
        return false;
    };
    SECTIONS.contains(&section.to_ascii_lowercase().as_str())
}

/// `key` is refused: `why` says what is wrong and what to set instead.
fn bad(key: &str, why: String) -> Result<(), ConfigError> {
    Err(ConfigError::new(key, why))
}

/// Histogram buckets: a non-empty list of finite, strictly increasing numbers.
fn check_buckets(key: &str, b: &[f64]) -> Result<(), ConfigError> {
    if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) || b.iter().any(|x| !x.is_finite()) {
        return bad(
            key,
            "must be a non-empty list of finite, strictly increasing numbers".into(),
        );
    }
    Ok(())
}

fn enum_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(yaml: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, yaml.as_bytes()).unwrap();
        f
    }

    /// `yaml` as the config file, with MLFLOW_TRACKING_URI set (the sections' tests).
    pub(crate) fn load(yaml: &str) -> Result<Settings, ConfigError> {
        let f = write(yaml);
        let e = env(&[("MLFLOW_TRACKING_URI", "http://mlflow:5000")]);
        Settings::load(Some(f.path()), &e, &FlagOverrides::default())
    }

    /// Every section is one [`SECTIONS`] names, in the order the YAML prints them.
    #[test]
    fn the_sections_are_the_settings_fields() {
        let yaml = serde_yaml_ng::to_value(Settings::default()).unwrap();
        let keys: Vec<&str> = yaml
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, SECTIONS);
    }

    #[test]
    fn only_the_tracking_uri_is_needed() {
        let s = Settings::load(
            None,
            &env(&[("MLFLOW_TRACKING_URI", "http://mlflow:5000")]),
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(s.mlflow.tracking_uri, "http://mlflow:5000");
        assert_eq!(s.mlflow.sync_interval, Duration::from_secs(60));
        assert_eq!(s.mlflow.full_resync_interval, Duration::from_secs(3600));
        assert_eq!(s.web.listen_address, ":9868");
        assert_eq!(s.metrics.max_label_values, 200);
    }

    #[test]
    fn flags_beat_env_and_env_beats_the_file() {
        let f = write(
            "mlflow:\n  tracking_uri: http://file:5000\n  sync_interval: 10s\n  timeout: 5s\nlog:\n  level: debug\n",
        );
        let e = env(&[
            ("MLFLOW_TRACKING_URI", "http://env:5000"),
            ("MLFLOW_EXPORTER_MLFLOW__SYNC_INTERVAL", "20s"),
            // Set by Kubernetes for a Service named mlflow-exporter: not a setting.
            ("MLFLOW_EXPORTER_SERVICE_HOST", "10.0.0.1"),
            ("MLFLOW_EXPORTER_PORT", "tcp://10.0.0.1:9868"),
        ]);
        let s = Settings::load(Some(f.path()), &e, &FlagOverrides::default()).unwrap();
        assert_eq!(s.mlflow.tracking_uri, "http://env:5000");
        assert_eq!(s.mlflow.sync_interval, Duration::from_secs(20));
        assert_eq!(s.mlflow.timeout, Duration::from_secs(5));
        assert_eq!(s.log.level, LogLevel::Debug);
        let flags = FlagOverrides {
            sync_interval: Some("30s".into()),
            tracking_uri: Some("http://flag:5000".into()),
            log_format: Some(LogFormat::Json),
            ..Default::default()
        };
        let s = Settings::load(Some(f.path()), &e, &flags).unwrap();
        assert_eq!(s.mlflow.tracking_uri, "http://flag:5000");
        assert_eq!(s.mlflow.sync_interval, Duration::from_secs(30));
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn mlflow_client_variables_are_honoured_and_redacted() {
        let e = env(&[
            ("MLFLOW_TRACKING_URI", "https://mlflow"),
            ("MLFLOW_TRACKING_USERNAME", "svc"),
            ("MLFLOW_TRACKING_PASSWORD", "hunter2-pw"),
            ("MLFLOW_TRACKING_TOKEN", "tok-abc123"),
            ("MLFLOW_TRACKING_INSECURE_TLS", "TRUE"),
            ("MLFLOW_TRACKING_SERVER_CERT_PATH", "/etc/ca.pem"),
        ]);
        let s = Settings::load(None, &e, &FlagOverrides::default()).unwrap();
        assert_eq!(s.mlflow.username.as_deref(), Some("svc"));
        assert_eq!(s.mlflow.password.as_ref().unwrap().expose(), "hunter2-pw");
        assert_eq!(s.mlflow.token.as_ref().unwrap().expose(), "tok-abc123");
        // Only the exact string "true" disables verification, as in MLflow's client.
        assert!(!s.mlflow.insecure_tls);
        assert_eq!(
            s.mlflow.server_cert_path,
            Some(PathBuf::from("/etc/ca.pem"))
        );
        let yaml = s.to_redacted_yaml();
        assert!(!yaml.contains("hunter2-pw") && !yaml.contains("tok-abc123"));
        assert_eq!(yaml.matches("<redacted>").count(), 2);
        assert!(!format!("{s:?}").contains("hunter2-pw"));
    }

    #[test]
    fn rate_card_and_extra_labels_parse() {
        let f = write(
            r#"
mlflow: {tracking_uri: "http://m"}
metrics:
  user_windows: [1h, 2d]
  extra_labels: [{name: estimator, param: estimator_class}]
cost:
  currency: EUR
  default_hourly_rate: 0.5
  rates:
    - match: {tag: instance_type, value: g5.xlarge}
      hourly_rate: 1.006
      gpus: 1
    - match: {param: node, regex: "^p4d"}
      hourly_rate: 32.77
"#,
        );
        let s = Settings::load(Some(f.path()), &HashMap::new(), &FlagOverrides::default()).unwrap();
        assert_eq!(
            s.metrics.user_windows,
            vec![Duration::from_secs(3600), Duration::from_secs(172800)]
        );
        assert_eq!(
            s.metrics.extra_labels[0].param.as_deref(),
            Some("estimator_class")
        );
        assert_eq!(s.cost.currency, "EUR");
        assert_eq!(s.cost.rates.len(), 2);
        assert_eq!(s.cost.rates[0].gpus, Some(1));
        assert_eq!(s.cost.rates[1].matcher.regex.as_deref(), Some("^p4d"));
    }

    fn load_err(yaml: &str) -> String {
        let f = write(yaml);
        Settings::load(Some(f.path()), &HashMap::new(), &FlagOverrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_config_names_the_key() {
        let e = load_err("mlflow: {tracking_uri: 'http://m', sync_interval: soon}\n");
        assert!(e.contains("mlflow.sync_interval"), "{e}");
        let e = load_err("mlflow: {tracking_uri: 'http://m', sync_intervall: 5s}\n");
        assert!(e.contains("sync_intervall"), "{e}");
        let e = load_err("mlflow: {tracking_uri: 'http://m', concurrency: 0}\n");
        assert!(
            e.contains("mlflow.concurrency") && e.contains("outside 1..=16"),
            "{e}"
        );
        for (yaml, key) in [
            (
                "web: {max_connections: 0}",
                "web.max_connections: must be at least 1",
            ),
            (
                "web: {request_timeout: 0s}",
                "web.request_timeout: must be greater than zero",
            ),
            (
                "web: {read_header_timeout: 0s}",
                "web.read_header_timeout: must be",
            ),
            (
                "webhooks: {rate_burst: 0}",
                "webhooks.rate_limit: rate_limit and rate_burst",
            ),
        ] {
            let e = load_err(&format!("mlflow: {{tracking_uri: 'http://m'}}\n{yaml}\n"));
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let e = load_err("mlflow: {tracking_uri: 'sqlite:///x.db'}\n");
        assert!(
            e.contains("mlflow.tracking_uri") && e.contains("sqlite"),
            "{e}"
        );
        let e = load_err("mlflow: {tracking_uri: 'http://m'}\ncost: {rates: [{match: {tag: a}, hourly_rate: 1}]}\n");
        assert!(
            e.contains("cost.rates[0]") && e.contains("value or regex"),
            "{e}"
        );
        let e = load_err("mlflow: {tracking_uri: 'http://m'}\ncost: {rates: [{match: {tag: a, regex: '('}, hourly_rate: 1}]}\n");
        assert!(
            e.contains("cost.rates[0]") && e.contains("does not compile"),
            "{e}"
        );
        let e = load_err(
            "mlflow: {tracking_uri: 'http://m'}\nmetrics: {extra_labels: [{name: team, tag: t}]}\n",
        );
        assert!(e.contains("metrics.extra_labels[0]"), "{e}");
        let e = load_err("mlflow: {tracking_uri: 'http://m'}\nmetrics: {features: [{name: x, tag: t, inputs: true}]}\n");
        assert!(
            e.contains("metrics.features[0]") && e.contains("exactly one"),
            "{e}"
        );
        let e = load_err("mlflow: {tracking_uri: 'http://m'}\nmetrics: {quality_metrics: [{key: acc, goal: up}]}\n");
        assert!(e.contains("up"), "{e}");
        let e = load_err(
            "mlflow: {tracking_uri: 'http://m'}\nmetrics: {gpu_utilization_buckets: [0.5, 0.2]}\n",
        );
        assert!(e.contains("metrics.gpu_utilization_buckets"), "{e}");
        let e = load_err("mlflow: {tracking_uri: 'http://m'}\nweb: {listen_address: 'nonsense'}\n");
        assert!(e.contains("web.listen_address"), "{e}");
        let e = Settings::load(None, &HashMap::new(), &FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("MLFLOW_TRACKING_URI"), "{e}");
    }
}
