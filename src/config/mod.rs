//! Configuration: the YAML file, environment variables (MLflow's own `MLFLOW_TRACKING_*` among them) and
//! command-line flags, merged in that order of precedence into one validated [`Settings`].
//! The doc comments on the structs are the configuration reference; secrets print as `<redacted>`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::ConfigError;

pub mod probes;
pub use probes::ProbeSettings;

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

/// The durable history of delivery events.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// SQLite database file (`--storage.path`); its directory is created if missing.
    pub path: PathBuf,
    /// Events older than this are deleted (at start-up and daily).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            path: PathBuf::from("./data/mlflow-exporter.db"),
            retention: Duration::from_secs(400 * 86400),
        }
    }
}

/// What counts as a deployment, and the buckets of the delivery histograms (seconds).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Aliases that serve traffic: moving one is a deployment. The legacy stage `Production` always is.
    pub serving_aliases: Vec<String>,
    pub lead_time_buckets: Vec<f64>,
    pub time_to_register_buckets: Vec<f64>,
    pub time_to_deploy_buckets: Vec<f64>,
    pub recovery_buckets: Vec<f64>,
    pub incident_recovery_buckets: Vec<f64>,
    /// Models whose delivery histograms are always shown apart; the others share `__other__` of
    /// their team.
    pub detailed_models: Vec<String>,
    /// Besides those, the first this many models the history sees serving are shown apart.
    pub max_detailed_models: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        let h = |hours: &[f64]| hours.iter().map(|x| x * 3600.0).collect::<Vec<_>>();
        DeliverySettings {
            serving_aliases: vec!["champion".into(), "production".into(), "prod".into()],
            // Minutes to months: DORA's bands are 1 h, 1 week, 6 months.
            lead_time_buckets: h(&[
                0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 2160.0, 4320.0,
            ]),
            time_to_register_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 720.0]),
            time_to_deploy_buckets: h(&[0.25, 1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 2160.0]),
            recovery_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0]),
            incident_recovery_buckets: h(&[1.0 / 60.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0]),
            detailed_models: Vec::new(),
            max_detailed_models: 10,
        }
    }
}

/// How to reach MLflow and how often to read it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowSettings {
    /// Base URL of the tracking server (`MLFLOW_TRACKING_URI`), e.g. `http://mlflow:5000`.
    pub tracking_uri: String,
    /// Bearer token (`MLFLOW_TRACKING_TOKEN`).
    pub token: Option<Secret>,
    /// Basic-auth user (`MLFLOW_TRACKING_USERNAME`); wins over a token when both are set, as in MLflow's client.
    pub username: Option<String>,
    /// Basic-auth password (`MLFLOW_TRACKING_PASSWORD`).
    pub password: Option<Secret>,
    /// Skip TLS verification (`MLFLOW_TRACKING_INSECURE_TLS=true`). For testing only.
    pub insecure_tls: bool,
    /// CA bundle (PEM) to verify the server with (`MLFLOW_TRACKING_SERVER_CERT_PATH`).
    pub server_cert_path: Option<PathBuf>,
    /// Client certificate and key in one PEM file (`MLFLOW_TRACKING_CLIENT_CERT_PATH`).
    pub client_cert_path: Option<PathBuf>,
    /// Timeout of one request to MLflow.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of one request on connection errors, 429 and 5xx (never on other 4xx).
    pub max_retries: u32,
    /// First retry delay; doubles on each retry, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Page size of runs and model-version searches.
    pub page_size: u32,
    /// Larger answers from MLflow are refused (the cycle fails, nothing is kept): a runaway response
    /// must not exhaust the exporter's memory.
    pub max_response_bytes: usize,
    /// Requests in flight at once (1 = one at a time): the runs searches of a full read, over groups
    /// of experiments, and the searches of an incremental cycle. MLflow answers each on its own
    /// worker, and the exporter decodes one page while the next downloads.
    pub concurrency: usize,
    /// Time between sync cycles (`--mlflow.sync-interval`).
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Time between full re-reads, which also notice deleted runs (`--mlflow.full-resync-interval`).
    #[serde(with = "humantime_serde")]
    pub full_resync_interval: Duration,
    /// How far an incremental cycle looks back before its cursor, for clock skew and late writes.
    #[serde(with = "humantime_serde")]
    pub sync_overlap: Duration,
    /// Time between reads of the registered models (and so of their aliases) in incremental cycles;
    /// `0s`, the default, reads them every cycle. Alias moves carry no timestamp, so the list is read
    /// whole (about 2 KB a model, 0.2–0.5 s of MLflow for 500): a large registry whose alias moves
    /// arrive by MLflow's webhook can read it less often. New versions are read every cycle.
    #[serde(with = "humantime_serde")]
    pub registry_interval: Duration,
    /// Time between searches of every running run in incremental cycles; `0s`, the default, searches
    /// them every cycle. Between those, a cycle searches runs started since its cursor instead
    /// (cheaper: at 100 000 runs MLflow answers it in half the time), so what a running run changes
    /// before it ends (a tag set late), a run resumed, or one that left RUNNING without an end time
    /// is seen up to this late. Runs that end are seen every cycle either way.
    #[serde(with = "humantime_serde")]
    pub running_interval: Duration,
    /// Time between reads of MLflow 3's logged models (every experiment's, 50 to a page) in
    /// incremental cycles; full cycles always read them. Logged models carry no time of their
    /// last change MLflow can search by, so each read is whole: between reads a nothing-changed
    /// cycle costs no request more than before. `0s` reads them every cycle.
    #[serde(with = "humantime_serde")]
    pub logged_models_interval: Duration,
    /// Time between reads of MLflow 3's prompt registry (prompts with their aliases, and their
    /// versions: two searches) in incremental cycles; full cycles always read it. A prompt alias
    /// moved between reads is seen at the next one.
    #[serde(with = "humantime_serde")]
    pub prompts_interval: Duration,
    /// Read MLflow 3's traces (GenAI apps) every cycle: the traces that started since the last
    /// read, less `traces_overlap`.
    pub read_traces: bool,
    /// How far each traces read looks back before the latest start it read: MLflow writes a
    /// trace when it ends, with the time it started, so this covers the longest trace and the
    /// delay of its export. A trace written later than this after its start is not counted.
    #[serde(with = "humantime_serde")]
    pub traces_overlap: Duration,
    /// A trace still in progress holds the reads back at its start this long; one in progress
    /// longer is given up (`mlflow_exporter_traces_given_up_total`).
    #[serde(with = "humantime_serde")]
    pub traces_max_in_progress: Duration,
    /// Feedback comes after its trace (a user's thumbs-up, an LLM judge scoring later): every
    /// `feedback_interval` a traces read looks back this far for feedback not counted yet, and
    /// the exporter remembers the traces and feedback of this window. `0s`: no look-back (only
    /// feedback there when a trace is first read is counted).
    #[serde(with = "humantime_serde")]
    pub feedback_window: Duration,
    #[serde(with = "humantime_serde")]
    pub feedback_interval: Duration,
    /// Time between reads of each GenAI app's LLM calls by model (MLflow's aggregation of its
    /// traces' spans: two requests an app). A window is read once, `traces_overlap` after it
    /// ends, as a trace is counted. `0s`: every cycle.
    #[serde(with = "humantime_serde")]
    pub llm_calls_interval: Duration,
    /// Reuse a connection to MLflow for the next request. Off by default: MLflow 3's server with
    /// several workers (its default is 4) leaves Nagle's algorithm on, so on a reused connection a
    /// small answer waits about 40 ms for the client's delayed ACK; a new connection is answered at
    /// once, and new connections spread over the workers. Turn on when MLflow is far away behind
    /// TLS, where a handshake per request costs more than that.
    pub keep_alive: bool,
    /// Which workspaces of a workspace-enabled MLflow 3 (`mlflow server --enable-workspaces`) are
    /// read: all by default. Ignored by a server without workspaces.
    pub workspaces: WorkspaceSelection,
}

/// `mlflow.workspaces`: an include list (empty: every workspace) and an exclude list, by name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceSelection {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl WorkspaceSelection {
    /// True when the workspace `name` is read.
    pub fn selects(&self, name: &str) -> bool {
        let listed = |l: &[String]| l.iter().any(|w| w == name);
        (self.include.is_empty() || listed(&self.include)) && !listed(&self.exclude)
    }
}

impl MlflowSettings {
    /// Moves credentials written into the tracking URI (`http://user:pass@host`) into `username` and
    /// `password` (unless those are set), so that the URI can be logged and printed as it is.
    pub fn take_url_credentials(&mut self) {
        let Ok(mut url) = url::Url::parse(self.tracking_uri.trim()) else {
            return;
        };
        if url.username().is_empty() && url.password().is_none() {
            return;
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        if self.username.is_none() && !url.username().is_empty() {
            self.username = Some(decode(url.username()));
        }
        if self.password.is_none() {
            self.password = url.password().map(|p| Secret::new(decode(p)));
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        self.tracking_uri = url.to_string().trim_end_matches('/').to_string();
    }
}

impl Default for MlflowSettings {
    fn default() -> Self {
        MlflowSettings {
            tracking_uri: String::new(),
            token: None,
            username: None,
            password: None,
            insecure_tls: false,
            server_cert_path: None,
            client_cert_path: None,
            timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_backoff: Duration::from_millis(500),
            page_size: 1000,
            max_response_bytes: 64 << 20,
            concurrency: 2,
            sync_interval: Duration::from_secs(60),
            full_resync_interval: Duration::from_secs(3600),
            sync_overlap: Duration::from_secs(300),
            registry_interval: Duration::ZERO,
            running_interval: Duration::ZERO,
            logged_models_interval: Duration::from_secs(600),
            prompts_interval: Duration::from_secs(300),
            read_traces: true,
            traces_overlap: Duration::from_secs(900),
            traces_max_in_progress: Duration::from_secs(3600),
            feedback_window: Duration::from_secs(3600),
            feedback_interval: Duration::from_secs(300),
            llm_calls_interval: Duration::from_secs(300),
            keep_alive: false,
            workspaces: WorkspaceSelection::default(),
        }
    }
}

/// The exporter's own HTTP server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Address to listen on (`--web.listen-address`); `:PORT` means every interface.
    pub listen_address: String,
    /// Path of the metrics endpoint (`--web.telemetry-path`).
    pub telemetry_path: String,
    /// exporter-toolkit web config: TLS, basic auth, headers (`--web.config.file`). Re-read when it
    /// or a file it names changes.
    pub config_file: Option<PathBuf>,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Time a client has for a TLS handshake and for each request's head.
    #[serde(with = "humantime_serde")]
    pub read_header_timeout: Duration,
    /// Time a request has from its head to its answer, body included; slower ones get 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen_address: format!(":{DEFAULT_PORT}"),
            telemetry_path: "/metrics".into(),
            config_file: None,
            max_connections: 512,
            read_header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `debug`, `info`, `warn` or `error` (`--log.level`).
    pub level: LogLevel,
    /// `logfmt` or `json` (`--log.format`).
    pub format: LogFormat,
}

/// What the derived metrics look like.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Buckets of `mlflow_run_duration_seconds`, in seconds.
    pub run_duration_buckets: Vec<f64>,
    /// Windows of the active, new and churned user gauges.
    #[serde(with = "humantime_vec")]
    pub user_windows: Vec<Duration>,
    /// Run tag (then experiment tag) that names a run's team.
    pub team_tag: String,
    /// At most this many values per user-fed label; the rest become `__other__`. A value that got a
    /// series of its own keeps it.
    pub max_label_values: usize,
    /// Samples one scrape may hold: new label combinations of the counters that do not fit are
    /// folded into `__other__` (never a family dropped).
    pub max_series: usize,
    /// Extra labels on `mlflow_runs_ended_total` and `mlflow_run_duration_seconds`, from a run tag or param.
    pub extra_labels: Vec<ExtraLabel>,
    /// Platform features whose users `mlflow_feature_users` counts; each a predicate on a run.
    pub features: Vec<Feature>,
    /// Model-quality metric keys and which way is better, for `mlflow_experiment_best_metric`.
    pub quality_metrics: Vec<QualityMetric>,
    /// Buckets of `mlflow_user_time_to_first_model_seconds`, in seconds.
    pub time_to_first_model_buckets: Vec<f64>,
    /// Buckets of `mlflow_run_gpu_utilization_ratio`.
    pub gpu_utilization_buckets: Vec<f64>,
    /// Buckets of `mlflow_trace_duration_seconds`, in seconds.
    pub trace_duration_buckets: Vec<f64>,
    /// The p99 trace duration the GenAI apps should stay within: exported as
    /// `mlflow_trace_latency_budget_seconds`, which `MLflowGenAILatencyHigh` compares with.
    #[serde(with = "humantime_serde")]
    pub trace_latency_budget: Duration,
    /// Buckets of `mlflow_trace_feedback_score` (numeric feedback: a 0–1 judge score or 1–5 stars).
    pub feedback_score_buckets: Vec<f64>,
}

/// A platform feature, used by a run when its one predicate holds, e.g. `{name: git, tag:
/// mlflow.source.git.commit}`. Set exactly one of `tag` (present, or equal to `value`),
/// `metric_prefix`, `inputs: true` (the run logged dataset inputs) or `registered: true` (a model
/// version was created from the run).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The `feature` label value.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inputs: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registered: bool,
    /// MLflow 3: traces were made in the run (a trace's `mlflow.sourceRun` names it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub traces: bool,
}

impl Feature {
    fn tag(name: &str, tag: &str) -> Feature {
        Feature {
            name: name.into(),
            tag: Some(tag.into()),
            ..Feature::default()
        }
    }
}

/// Which way a quality metric improves.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Max,
    Min,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QualityMetric {
    pub key: String,
    pub goal: Goal,
}

/// At most this many features: a run's feature set is a 32-bit mask.
pub const MAX_FEATURES: usize = 32;

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            run_duration_buckets: vec![
                60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
            ],
            user_windows: vec![
                Duration::from_secs(86400),
                Duration::from_secs(7 * 86400),
                Duration::from_secs(30 * 86400),
            ],
            team_tag: "team".into(),
            max_label_values: 200,
            max_series: 10_000,
            extra_labels: Vec::new(),
            features: vec![
                Feature {
                    name: "registry".into(),
                    registered: true,
                    ..Feature::default()
                },
                Feature {
                    name: "system_metrics".into(),
                    metric_prefix: Some("system/".into()),
                    ..Feature::default()
                },
                Feature::tag("autolog", "mlflow.autologging"),
                Feature::tag("git", "mlflow.source.git.commit"),
                Feature::tag("nested_runs", "mlflow.parentRunId"),
                Feature {
                    name: "datasets".into(),
                    inputs: true,
                    ..Feature::default()
                },
                // MLflow 3 tags a run that loaded a prompt of its registry.
                Feature::tag("prompts", "mlflow.linkedPrompts"),
                Feature {
                    name: "tracing".into(),
                    traces: true,
                    ..Feature::default()
                },
                // MLflow 3's GenAI evaluation (`mlflow.genai.evaluate`) tags its runs so.
                Feature {
                    name: "evaluation".into(),
                    tag: Some("mlflow.runType".into()),
                    value: Some("genai_evaluate".into()),
                    ..Feature::default()
                },
            ],
            quality_metrics: [
                ("accuracy", Goal::Max),
                ("auc", Goal::Max),
                ("f1", Goal::Max),
                ("rmse", Goal::Min),
                ("loss", Goal::Min),
            ]
            .into_iter()
            .map(|(key, goal)| QualityMetric {
                key: key.into(),
                goal,
            })
            .collect(),
            time_to_first_model_buckets: [
                1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 1440.0, 2160.0, 4320.0,
            ]
            .iter()
            .map(|hours| hours * 3600.0)
            .collect(),
            gpu_utilization_buckets: (1..=10).map(|i| f64::from(i) / 10.0).collect(),
            // 10 ms to 5 min: a chat turn to a long agent run.
            trace_duration_buckets: vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ],
            trace_latency_budget: Duration::from_secs(10),
            feedback_score_buckets: vec![0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0],
        }
    }
}

/// A label taken from each run, e.g. `{name: estimator, param: estimator_class}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtraLabel {
    /// Label name on the exported series.
    pub name: String,
    /// Run tag to read it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Run param to read it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

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

mod humantime_vec {
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
            Some(path) if !path.exists() => Err(ConfigError::Invalid(format!(
                "config file {} does not exist; pass an existing YAML file to --config.file",
                path.display()
            ))),
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
                .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
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
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut settings: Settings = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.mlflow.take_url_credentials();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let uri = self.mlflow.tracking_uri.trim();
        if uri.is_empty() {
            return bad(
                "mlflow.tracking_uri",
                "not set; set MLFLOW_TRACKING_URI or mlflow.tracking_uri to the tracking server's URL".into(),
            );
        }
        match url::Url::parse(uri) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => {
                return bad(
                    "mlflow.tracking_uri",
                    format!(
                        "scheme {:?} is not served over HTTP; the exporter needs a tracking server URL (http:// or https://)",
                        u.scheme()
                    ),
                )
            }
            // Not echoed when it may hold credentials.
            Err(e) if uri.contains('@') => {
                return bad("mlflow.tracking_uri", format!("not a URL: {e}"))
            }
            Err(e) => return bad("mlflow.tracking_uri", format!("{uri:?} is not a URL: {e}")),
        }
        let ws = &self.mlflow.workspaces;
        for (key, list) in [
            ("mlflow.workspaces.include", &ws.include),
            ("mlflow.workspaces.exclude", &ws.exclude),
        ] {
            if list.iter().any(|w| w.trim().is_empty()) {
                return bad(key, "holds an empty name; list workspaces by name".into());
            }
        }
        if let Some(w) = ws.include.iter().find(|w| ws.exclude.contains(w)) {
            return bad(
                "mlflow.workspaces",
                format!("{w:?} is both included and excluded; keep it in one list"),
            );
        }
        if self.mlflow.password.is_some() && self.mlflow.username.is_none() {
            return bad(
                "mlflow.password",
                "set without a username; set MLFLOW_TRACKING_USERNAME too".into(),
            );
        }
        for (key, d) in [
            ("mlflow.timeout", self.mlflow.timeout),
            ("mlflow.sync_interval", self.mlflow.sync_interval),
            (
                "mlflow.full_resync_interval",
                self.mlflow.full_resync_interval,
            ),
        ] {
            if d.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if self.mlflow.page_size == 0 || self.mlflow.page_size > 50_000 {
            return bad(
                "mlflow.page_size",
                format!(
                    "{} is outside 1..=50000 (MLflow's limit)",
                    self.mlflow.page_size
                ),
            );
        }
        if self.mlflow.max_response_bytes < 1024 {
            return bad(
                "mlflow.max_response_bytes",
                format!(
                    "{} is below 1024; a page of runs needs far more",
                    self.mlflow.max_response_bytes
                ),
            );
        }
        if !(1..=16).contains(&self.mlflow.concurrency) {
            return bad(
                "mlflow.concurrency",
                format!(
                    "{} is outside 1..=16 (searches in flight against MLflow)",
                    self.mlflow.concurrency
                ),
            );
        }
        parse_listen_address(&self.web.listen_address)
            .map_err(|e| ConfigError::Invalid(format!("web.listen_address: {e}")))?;
        if self.web.max_connections == 0 {
            return bad("web.max_connections", "must be at least 1".into());
        }
        for (key, d) in [
            ("web.read_header_timeout", self.web.read_header_timeout),
            ("web.request_timeout", self.web.request_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if self.webhooks.rate_limit == 0 || self.webhooks.rate_burst == 0 {
            return bad(
                "webhooks.rate_limit",
                "rate_limit and rate_burst must be at least 1".into(),
            );
        }
        if !self.web.telemetry_path.starts_with('/') || self.web.telemetry_path.len() < 2 {
            return bad(
                "web.telemetry_path",
                format!(
                    "{:?} must start with / and not be /",
                    self.web.telemetry_path
                ),
            );
        }
        for (key, b) in [
            (
                "delivery.lead_time_buckets",
                &self.delivery.lead_time_buckets,
            ),
            (
                "delivery.time_to_register_buckets",
                &self.delivery.time_to_register_buckets,
            ),
            (
                "delivery.time_to_deploy_buckets",
                &self.delivery.time_to_deploy_buckets,
            ),
            ("delivery.recovery_buckets", &self.delivery.recovery_buckets),
            (
                "delivery.incident_recovery_buckets",
                &self.delivery.incident_recovery_buckets,
            ),
            (
                "metrics.run_duration_buckets",
                &self.metrics.run_duration_buckets,
            ),
            (
                "metrics.time_to_first_model_buckets",
                &self.metrics.time_to_first_model_buckets,
            ),
            (
                "metrics.gpu_utilization_buckets",
                &self.metrics.gpu_utilization_buckets,
            ),
            (
                "metrics.trace_duration_buckets",
                &self.metrics.trace_duration_buckets,
            ),
            (
                "metrics.feedback_score_buckets",
                &self.metrics.feedback_score_buckets,
            ),
            ("probes.duration_buckets", &self.probes.duration_buckets),
        ] {
            if b.is_empty()
                || b.windows(2).any(|w| w[0] >= w[1])
                || b.iter().any(|x| !x.is_finite())
            {
                return bad(
                    key,
                    "must be a non-empty list of finite, strictly increasing numbers".into(),
                );
            }
        }
        let features = &self.metrics.features;
        if features.len() > MAX_FEATURES {
            return bad(
                "metrics.features",
                format!("at most {MAX_FEATURES} features"),
            );
        }
        for (i, f) in features.iter().enumerate() {
            let key = format!("metrics.features[{i}]");
            if f.name.is_empty() || features[..i].iter().any(|o| o.name == f.name) {
                return bad(&key, format!("name {:?} is empty or appears twice", f.name));
            }
            let kinds = [
                f.tag.is_some(),
                f.metric_prefix.is_some(),
                f.inputs,
                f.registered,
                f.traces,
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return bad(
                    &key,
                    "set exactly one of tag, metric_prefix, inputs: true, registered: true or traces: true"
                        .into(),
                );
            }
            if f.value.is_some() && f.tag.is_none() {
                return bad(&key, "value only goes with tag".into());
            }
        }
        for (i, q) in self.metrics.quality_metrics.iter().enumerate() {
            if q.key.is_empty()
                || self.metrics.quality_metrics[..i]
                    .iter()
                    .any(|o| o.key == q.key)
            {
                return bad(
                    &format!("metrics.quality_metrics[{i}]"),
                    format!("key {:?} is empty or appears twice", q.key),
                );
            }
        }
        if self.metrics.user_windows.is_empty()
            || self.metrics.user_windows.iter().any(|w| w.is_zero())
        {
            return bad(
                "metrics.user_windows",
                "must be a non-empty list of non-zero durations such as 1d".into(),
            );
        }
        if self.webhooks.mlflow.enabled
            && self
                .webhooks
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
        if self.metrics.max_label_values == 0 {
            return bad("metrics.max_label_values", "must be at least 1".into());
        }
        if self.metrics.max_series < 1000 {
            return bad(
                "metrics.max_series",
                "must be at least 1000: the exporter's own metrics and one series of each family need that many".into(),
            );
        }
        if self.metrics.team_tag.is_empty() {
            return bad("metrics.team_tag", "must not be empty".into());
        }
        let reserved = [
            "experiment",
            "status",
            "team",
            "instance_type",
            "le",
            "job",
            "instance",
        ];
        for (i, l) in self.metrics.extra_labels.iter().enumerate() {
            let key = format!("metrics.extra_labels[{i}]");
            if !is_label_name(&l.name) || l.name.starts_with("__") {
                return bad(
                    &key,
                    format!("{:?} is not a valid Prometheus label name", l.name),
                );
            }
            if reserved.contains(&l.name.as_str()) {
                return bad(&key, format!("label name {:?} is already used", l.name));
            }
            if self.metrics.extra_labels[..i]
                .iter()
                .any(|o| o.name == l.name)
            {
                return bad(&key, format!("label name {:?} appears twice", l.name));
            }
            if l.tag.is_some() == l.param.is_some() {
                return bad(&key, "set exactly one of tag or param".into());
            }
        }
        self.probes.validate()?;
        if !self.cost.default_hourly_rate.is_finite() || self.cost.default_hourly_rate < 0.0 {
            return bad("cost.default_hourly_rate", "must be a number ≥ 0".into());
        }
        for (i, r) in self.cost.token_rates.iter().enumerate() {
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
            if self.cost.token_rates[..i]
                .iter()
                .any(|o| o.model == r.model)
            {
                return bad(&key, format!("model {:?} is priced twice", r.model));
            }
        }
        for (i, r) in self.cost.rates.iter().enumerate() {
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
                    ConfigError::Invalid(format!("{key}: regex {re:?} does not compile: {e}"))
                })?;
            }
        }
        Ok(())
    }

    /// The effective configuration as YAML, secrets redacted (for `check-config`).
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

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
    [
        "MLFLOW", "WEB", "LOG", "METRICS", "COST", "STORAGE", "DELIVERY", "WEBHOOKS", "PROBES",
    ]
    .contains(&section.to_ascii_uppercase().as_str())
}

fn enum_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `host:port`, `:port` (every interface) or `[v6]:port`.
pub fn parse_listen_address(addr: &str) -> Result<std::net::SocketAddr, String> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    use std::net::ToSocketAddrs;
    full.to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not host:port or :port ({e})"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn credentials_in_the_tracking_uri_move_out_of_it_and_variables_win() {
        let load = |vars: &[(&str, &str)]| {
            let env = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::load(None, &env, &FlagOverrides::default()).unwrap()
        };
        let uri = (
            "MLFLOW_TRACKING_URI",
            "https://bob:p%40ss@mlflow.example:5000/base",
        );
        let s = load(&[uri]);
        assert_eq!(s.mlflow.tracking_uri, "https://mlflow.example:5000/base");
        assert_eq!(s.mlflow.username.as_deref(), Some("bob"));
        assert_eq!(s.mlflow.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert!(!s.to_redacted_yaml().contains("p@ss"));
        let s = load(&[
            uri,
            ("MLFLOW_TRACKING_USERNAME", "alice"),
            ("MLFLOW_TRACKING_PASSWORD", "from-var"),
        ]);
        assert_eq!(s.mlflow.tracking_uri, "https://mlflow.example:5000/base");
        assert_eq!(s.mlflow.username.as_deref(), Some("alice"));
        assert_eq!(
            s.mlflow.password.as_ref().map(Secret::expose),
            Some("from-var")
        );
        let s = load(&[("MLFLOW_TRACKING_URI", "http://mlflow:5000")]);
        assert_eq!(s.mlflow.tracking_uri, "http://mlflow:5000");
        assert_eq!(s.mlflow.username, None);
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

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":9868").unwrap().to_string(),
            "0.0.0.0:9868"
        );
        assert_eq!(
            parse_listen_address("127.0.0.1:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(parse_listen_address("9868").is_err());
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    fn load(yaml: &str) -> Result<Settings, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, yaml.as_bytes()).unwrap();
        let e: HashMap<String, String> = [(
            "MLFLOW_TRACKING_URI".to_string(),
            "http://mlflow:5000".to_string(),
        )]
        .into();
        Settings::load(Some(f.path()), &e, &FlagOverrides::default())
    }

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

#[cfg(test)]
mod workspace_tests {
    use super::*;

    fn load(yaml: &str) -> Result<Settings, ConfigError> {
        let e: HashMap<String, String> = [(
            "MLFLOW_TRACKING_URI".to_string(),
            "http://mlflow:5000".to_string(),
        )]
        .into();
        Settings::from_yaml(yaml, &e, &FlagOverrides::default())
    }

    #[test]
    fn every_workspace_is_read_unless_a_list_says_otherwise() {
        let all = load("").unwrap().mlflow.workspaces;
        assert!(all.selects("default") && all.selects("team-b"));
        let s = load("mlflow:\n  workspaces:\n    include: [team-a, team-b]\n").unwrap();
        let w = s.mlflow.workspaces;
        assert_eq!(
            (
                w.selects("team-a"),
                w.selects("team-b"),
                w.selects("default")
            ),
            (true, true, false)
        );
        let s = load("mlflow:\n  workspaces:\n    exclude: [sandbox]\n").unwrap();
        let w = s.mlflow.workspaces;
        assert_eq!((w.selects("sandbox"), w.selects("default")), (false, true));
    }

    #[test]
    fn a_workspace_in_both_lists_or_an_empty_name_is_refused() {
        let err = load("mlflow:\n  workspaces:\n    include: [a]\n    exclude: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mlflow.workspaces: \"a\" is both included and excluded"),
            "{err}"
        );
        let err = load("mlflow:\n  workspaces:\n    exclude: [\"\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mlflow.workspaces.exclude: holds an empty name"),
            "{err}"
        );
        let err = load("mlflow:\n  workspaces:\n    only: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only"), "{err}");
    }
}
