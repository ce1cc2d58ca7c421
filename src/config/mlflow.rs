//! How to reach MLflow and how often to read it: `mlflow.*`, with MLflow's own `MLFLOW_TRACKING_*`
//! variables. Credentials given in the tracking URI move out of it at load.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError, Secret};

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

impl MlflowSettings {
    /// The tracking URI is an http(s) URL; workspaces, credentials, durations and limits make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let uri = self.tracking_uri.trim();
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
        let ws = &self.workspaces;
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
        if self.password.is_some() && self.username.is_none() {
            return bad(
                "mlflow.password",
                "set without a username; set MLFLOW_TRACKING_USERNAME too".into(),
            );
        }
        for (key, d) in [
            ("mlflow.timeout", self.timeout),
            ("mlflow.sync_interval", self.sync_interval),
            ("mlflow.full_resync_interval", self.full_resync_interval),
        ] {
            if d.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if self.page_size == 0 || self.page_size > 50_000 {
            return bad(
                "mlflow.page_size",
                format!("{} is outside 1..=50000 (MLflow's limit)", self.page_size),
            );
        }
        if self.max_response_bytes < 1024 {
            return bad(
                "mlflow.max_response_bytes",
                format!(
                    "{} is below 1024; a page of runs needs far more",
                    self.max_response_bytes
                ),
            );
        }
        if !(1..=16).contains(&self.concurrency) {
            return bad(
                "mlflow.concurrency",
                format!(
                    "{} is outside 1..=16 (searches in flight against MLflow)",
                    self.concurrency
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;
    use crate::config::*;

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
}
