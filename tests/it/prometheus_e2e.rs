//! The shipped Grafana boards and Prometheus rules, proven against real parts: a seeded MLflow, the
//! exporter, and a real Prometheus scraping it every second with every rule file loaded. Every
//! query of every panel (its variables set to real label values, the workspace at All) and every
//! recording rule must return data, and stopping MLflow must make `MLflowDown` fire once its `for`
//! has passed. Again on a workspace-enabled MLflow 3, the workspace variable set to `default`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::exporter::{example_config, ExporterProcess};
use crate::support::http::{free_port, http_post, wait_until};
use crate::support::mlflow::MlflowServer;
use crate::support::prometheus::Prometheus;
use crate::support::{now_ms, project_dir, stop_group, venv_bin, write_file};
use serde_json::Value;

/// Grafana's built-in variables, and what they stand for in an instant query.
const BUILTIN: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1h"),
];

fn files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(project_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Every PromQL expression of a board's panels (rows' nested panels included), with the panel title.
fn panel_queries(board: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&board["panels"], &mut out);
    out
}

/// Substitutes `$var`, `${var}`, `${var:fmt}` and `[[var]]`, longest names first.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut s = expr.to_string();
    let fmt = regex::Regex::new(r"\$\{(\w+):\w+\}").unwrap();
    s = fmt.replace_all(&s, "$${$1}").into_owned();
    for n in names {
        let v = &vars[n];
        s = s
            .replace(&format!("${{{n}}}"), v)
            .replace(&format!("[[{n}]]"), v)
            .replace(&format!("${n}"), v);
    }
    s
}

/// The values the boards are checked with: the parts of the seeded history that have every figure
/// (vision's runs have GPU, cost and failures, and its g5.xlarge run r17 is running, so its cost grows
/// while Prometheus watches; churn-model has deployments and an incident; the TLS probe has answers
/// and a certificate). Each must be one Prometheus offers for the variable.
const PREFERRED: &[(&str, &str)] = &[
    ("team", "vision"),
    ("experiment", "vision"),
    ("instance_type", "g5.xlarge"),
    ("model", "churn-model"),
    ("probe", "serving-tls"),
];

/// Variables checked at "All", their `allValue`: the workspaces of a workspace-enabled MLflow 3, of
/// which the seeded MLflow (started without `--enable-workspaces`) has none. `.*` also matches the
/// series without the label, so every panel must still have data.
const ALL: &[(&str, &str)] = &[("workspace", ".*")];

/// Real values for a board's variables: the first value of each `label_values(metric, label)`
/// (a value that is not `__other__` when there is one), the first option of a custom one, the
/// `allValue` of those of [`ALL`].
fn variables(board: &Value, prom: &Prometheus, all: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = BUILTIN
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lv = regex::Regex::new(r"^\s*label_values\(\s*(?:(.+),\s*)?(\w+)\s*\)\s*$").unwrap();
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap().to_string();
        let value = match v["type"].as_str() {
            Some("datasource") => continue,
            Some("query") if all.iter().any(|(n, _)| *n == name) => {
                let (_, all) = all.iter().find(|(n, _)| *n == name).unwrap();
                assert_eq!(
                    v["allValue"].as_str(),
                    Some(*all),
                    "variable {name}: All must stand for {all}"
                );
                assert_eq!(v["includeAll"], true, "variable {name}: no All");
                all.to_string()
            }
            Some("query") => {
                let q = v["query"]["query"]
                    .as_str()
                    .or(v["query"].as_str())
                    .unwrap_or("");
                let q = substitute(q, &vars);
                if let Some(metric) = q
                    .trim()
                    .strip_prefix("label_names(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    vars.insert(
                        name.clone(),
                        label_name(prom, metric, v["regex"].as_str().unwrap_or("")),
                    );
                    continue;
                }
                let c = lv
                    .captures(&q)
                    .unwrap_or_else(|| panic!("variable {name}: cannot read {q:?}"));
                let metric = c.get(1).map(|m| m.as_str()).unwrap_or("{__name__=~\".+\"}");
                let values = prom.label_values(metric, &c[2]);
                let chosen = PREFERRED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
                    .or_else(|| values.first().cloned())
                    .unwrap_or_else(|| panic!("variable {name}: {q} has no value in Prometheus"));
                assert!(
                    values.contains(&chosen),
                    "variable {name}: {chosen:?} is not among {values:?} ({q})"
                );
                chosen
            }
            _ => v["options"][0]["value"]
                .as_str()
                .or(v["current"]["value"].as_str())
                .or(v["query"].as_str().and_then(|q| q.split(',').next()))
                .unwrap_or("")
                .to_string(),
        };
        vars.insert(name, value);
    }
    vars
}

/// The first label name of `metric`'s series that the variable's regex keeps. Grafana's regexes
/// are JavaScript's; the one form used here, `/^(?!(?:a|b)$).+$/`, excludes the names listed.
fn label_name(prom: &Prometheus, metric: &str, regex: &str) -> String {
    let excluded: Vec<&str> = regex
        .split_once("(?:")
        .and_then(|(_, r)| r.split_once(")$)"))
        .map(|(names, _)| names.split('|').collect())
        .unwrap_or_default();
    let names = prom.api("/api/v1/labels", &[("match[]", metric)]).unwrap();
    names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .find(|n| !excluded.contains(n))
        .unwrap_or_else(|| panic!("no label name of {metric} passes {regex}"))
        .to_string()
}

/// A model endpoint over HTTPS with a self-signed certificate (Python's http.server), so the
/// probe panels have latency and a certificate expiry.
struct TlsEndpoint {
    child: std::process::Child,
    url: String,
}

impl TlsEndpoint {
    const SERVER: &'static str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        b = b'{"predictions": [1]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

    fn start(dir: &std::path::Path) -> TlsEndpoint {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = write_file(dir, "endpoint.pem", &cert.pem());
        let key_path = write_file(dir, "endpoint.key", &key.serialize_pem());
        let port = free_port();
        let mut cmd = std::process::Command::new(venv_bin("python"));
        cmd.args(["-c", Self::SERVER, &port.to_string()])
            .arg(cert_path)
            .arg(key_path);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let endpoint = TlsEndpoint {
            child: cmd.spawn().expect("start the HTTPS endpoint"),
            url: format!("https://127.0.0.1:{port}/invocations"),
        };
        wait_until(Duration::from_secs(20), "the HTTPS endpoint", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        endpoint
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// The example configuration plus a probe of `endpoint` serving churn-model's champion.
fn config_with_tls_probe(dir: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(example_config()).unwrap()).unwrap();
    let target = format!(
        "{{name: serving-tls, url: '{endpoint}', body: {{inputs: [[1.0]]}}, expect: {{json_path: '$.predictions[0]'}}, model: churn-model, alias: champion, tls: {{insecure_skip_verify: true}}}}"
    );
    config["probes"]["targets"]
        .as_sequence_mut()
        .unwrap()
        .push(serde_yaml_ng::from_str(&target).unwrap());
    config["cost"]["token_rates"] =
        serde_yaml_ng::from_str("[{model: house-llm-7b, input: 0.2, output: 0.6}]").unwrap();
    write_file(
        dir,
        "config.yaml",
        &serde_yaml_ng::to_string(&config).unwrap(),
    )
}

#[test]
fn every_panel_and_rule_has_data_and_mlflow_down_fires() {
    boards_and_rules(false);
}

/// The same history in the `default` workspace of a workspace-enabled MLflow 3: every panel has
/// data with the board's workspace variable set to it.
#[test]
fn every_panel_has_data_with_the_workspace_variable_set() {
    boards_and_rules(true);
}

/// Every recording rule and every panel query has data; without workspaces, also `MLflowDown`
/// fires once MLflow stops.
fn boards_and_rules(workspaces: bool) {
    let mut mlflow = match workspaces {
        true => MlflowServer::start_with(
            tempfile::tempdir().unwrap(),
            1,
            &["--enable-workspaces"],
            &[],
        ),
        false => MlflowServer::start(),
    };
    let t = now_ms() / 1000 * 1000;
    mlflow.seed(t, "initial");
    mlflow.seed(t, "prompts");
    let dir = tempfile::tempdir().unwrap();
    let endpoint = TlsEndpoint::start(dir.path());
    let config = config_with_tls_probe(dir.path(), &endpoint.url);
    let token = "e2e-events-token";
    let exporter = ExporterProcess::start(
        dir.path(),
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.sync-interval",
            "2s",
        ],
        &[
            ("MLFLOW_TRACKING_URI", mlflow.url.as_str()),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__ENABLED", "true"),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", token),
            ("MLFLOW_EXPORTER_PROBES__INTERVAL", "1s"),
            ("MLFLOW_EXPORTER_PROBES__TIMEOUT", "1s"),
            // Every cycle reads the prompt registry, and the apps' LLM calls of windows closed a
            // second after they end.
            ("MLFLOW_EXPORTER_MLFLOW__PROMPTS_INTERVAL", "1s"),
            ("MLFLOW_EXPORTER_MLFLOW__LLM_CALLS_INTERVAL", "1s"),
            ("MLFLOW_EXPORTER_MLFLOW__TRACES_OVERLAP", "1s"),
        ],
    );
    let mut exporter = exporter;
    exporter.wait_ready();
    // After the baseline: deployments (the champion alias moves, and the prompt's production), and an
    // incident opened and resolved.
    mlflow.seed(t, "incremental");
    mlflow.seed(t, "prompts_move");
    // The GenAI app's traces after the first read, so that the rate card prices them.
    mlflow.seed(t, "traces");
    let auth = format!("Bearer {token}");
    for body in [
        r#"{"type":"incident_opened","model":"churn-model","id":"inc-1","severity":"critical"}"#,
        r#"{"type":"incident_resolved","model":"churn-model","id":"inc-1"}"#,
    ] {
        let r = http_post(
            &exporter.addr,
            "/api/v1/events",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_until(Duration::from_secs(30), "the deployments", || {
        let s = exporter.scrape();
        let sum = |f: &str| s.family(f).values().sum::<f64>();
        sum("mlflow_model_deployments_total") >= 1.0
            && sum("mlflow_prompt_deployments_total") >= 1.0
    });

    let rules = files("deploy/prometheus/rules", "yml");
    assert!(!rules.is_empty());
    let prom = Prometheus::start("mlflow-exporter", &[&exporter.addr], &rules);
    // Enough scrapes for rate() and increase(), and 20 s of them so that `offset $__interval`
    // (15 s) has data too; then rules evaluated on them.
    prom.wait_for(
        "count_over_time(mlflow_up[1m]) >= 20",
        Duration::from_secs(90),
    );
    // r17 (vision, g5.xlarge) runs from T + 30 s: the cost panels' increases need it to have
    // accrued while Prometheus watched.
    prom.wait_for(
        r#"sum(increase(mlflow_run_cost_total{experiment="vision", instance_type="g5.xlarge"}[1m])) > 0"#,
        Duration::from_secs(90),
    );
    prom.wait_for(
        "count_over_time(mlflow:deployments:increase7d[1m]) >= 2",
        Duration::from_secs(30),
    );

    // Without workspaces no series has a workspace label, so the boards' workspace variable
    // offers only All; with them, the history is all in `default`, which the variable is set to.
    let (workspace, all): (&str, &[(&str, &str)]) = match workspaces {
        true => {
            assert_eq!(prom.label_values("mlflow_runs", "workspace"), ["default"]);
            ("default", &[])
        }
        false => {
            assert_eq!(
                prom.label_values("mlflow_runs", "workspace"),
                Vec::<String>::new(),
                "the seeded MLflow has no workspaces"
            );
            assert_eq!(
                prom.label_values(r#"{__name__=~"mlflow_.+"}"#, "workspace"),
                Vec::<String>::new(),
                "no series has a workspace label without workspaces"
            );
            (".*", ALL)
        }
    };

    let mut missing = Vec::new();
    // Every recording rule produces at least one series.
    for f in &rules {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for g in doc["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                if let Some(name) = r["record"].as_str() {
                    match prom.query(name) {
                        Ok(v) if !v.is_empty() => {}
                        other => missing.push(format!("recording rule {name}: {other:?}")),
                    }
                }
            }
        }
    }
    // Every panel query of every board, with its variables set to real values.
    let mut queries = 0;
    for board_path in files("grafana/dashboards", "json") {
        let board: Value =
            serde_json::from_str(&std::fs::read_to_string(&board_path).unwrap()).unwrap();
        let vars = variables(&board, &prom, all);
        assert_eq!(
            vars.get("workspace").map(String::as_str),
            Some(workspace),
            "{}: every board has the workspace variable",
            board_path.display()
        );
        let board_name = board_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for (title, expr) in panel_queries(&board) {
            let q = substitute(&expr, &vars);
            queries += 1;
            match prom.query(&q) {
                Ok(v) if !v.is_empty() => {}
                other => missing.push(format!("{board_name} / {title}: {q}\n    → {other:?}")),
            }
        }
    }
    assert!(queries > 50, "only {queries} panel queries found");
    assert!(
        missing.is_empty(),
        "{} of {queries} queries (and the rules) returned no data:\n{}",
        missing.len(),
        missing.join("\n")
    );
    if workspaces {
        return;
    }
    // Nothing is wrong yet: MLflowDown is quiet.
    assert_eq!(
        prom.query(r#"ALERTS{alertname="MLflowDown"}"#).unwrap(),
        Vec::<Value>::new()
    );

    // MLflow stops: the alert is pending at once and fires once its `for` (2 min) has passed.
    mlflow.stop();
    let stopped = Instant::now();
    prom.wait_for(
        r#"ALERTS{alertname="MLflowDown",alertstate="pending"}"#,
        Duration::from_secs(30),
    );
    let firing = prom.wait_for(
        r#"ALERTS{alertname="MLflowDown",alertstate="firing"}"#,
        Duration::from_secs(120 + 60),
    );
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_secs(120),
        "fired after {after:?}, before its for"
    );
    assert_eq!(firing[0]["metric"]["severity"], "critical");
    drop(exporter);
}
