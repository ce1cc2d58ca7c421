//! The Prometheus rules of deploy/prometheus/: `promtool check rules` on every rules file and
//! `promtool test rules` on every unit-test file, then what promtool does not check: the recording
//! rule names the dashboards rely on, the labels and annotations of every alert, runbook anchors
//! that exist in docs/runbooks.md, metrics and labels the exporter really exposes, the workspace
//! kept wherever an experiment or a model is (MLflow 3 workspaces), and unit tests that make every
//! alert fire and stay quiet and pin every recording rule's value.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::project_dir;
use mlflow_exporter::config::Settings;
use mlflow_exporter::exposition::Publisher;
use mlflow_exporter::metrics::{delivery, probes, specs, workspace, Derivation};
use mlflow_exporter::sync::Mode;
use regex::Regex;
use serde_yaml_ng::Value;

const RUNBOOKS: &str =
    "https://github.com/mlflow-exporter/mlflow-exporter/blob/main/docs/runbooks.md";
const RECORDING_GROUP: &str = "mlflow-recording";
const ALERT_GROUP: &str = "mlflow-alerts";

/// The recording rules the Grafana boards and the alerts query by name.
const RECORDING_RULES: &[&str] = &[
    "mlflow:deployments:increase7d",
    "mlflow:model_deployments:increase7d",
    "mlflow:lead_time_seconds:p50_30d",
    "mlflow:lead_time_seconds:p90_30d",
    "mlflow:lead_time_seconds:p90_7d",
    "mlflow:change_failure_rate:ratio30d",
    "mlflow:time_to_restore_seconds:p50_30d",
    "mlflow:rollback_recovery_seconds:p50_30d",
    "mlflow:probe_availability:ratio30d",
    "mlflow:probe_availability:ratio1d",
    "mlflow:probe_mtbf_seconds:30d",
    "mlflow:probe_mttr_seconds:30d",
    "mlflow:probe_duration_seconds:p99_5m",
    "mlflow:run_cost:increase1d",
    "mlflow:cost:increase1d",
    "mlflow:cost:burn_rate_per_hour",
    "mlflow:runs_ended:increase1d",
    "mlflow:run_failure:ratio1d",
    "mlflow:active_users:count",
    "mlflow:trace_error:ratio5m",
    "mlflow:traces:rate5m",
    "mlflow:trace_duration_seconds:p99_5m",
    "mlflow:trace_cost:increase1d",
    "mlflow:trace_feedback_positive:ratio6h",
];

const ALERTS: &[&str] = &[
    "MLflowExporterDown",
    "MLflowDown",
    "MLflowExporterSyncStale",
    "MLflowExporterSyncErrors",
    "MLflowExporterSeriesBudgetNear",
    "MLflowModelLeadTimeRegression",
    "MLflowChangeFailureRateHigh",
    "MLflowTimeToRestoreHigh",
    "MLflowDeployedModelWorse",
    "MLflowCostSpike",
    "MLflowRunFailureRatioSpike",
    "MLflowProbeDown",
    "MLflowProbeCertificateExpiring",
    "MLflowProbeLatencyHigh",
    "MLflowGenAIErrorRatioHigh",
    "MLflowGenAILatencyHigh",
    "MLflowGenAICostSpike",
    "MLflowGenAIFeedbackFalling",
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Whether a family's series carry a `workspace` label on a workspace-enabled MLflow 3.
fn per_workspace(name: &str) -> bool {
    workspace::labelled(name)
}

fn prometheus_dir() -> PathBuf {
    project_dir().join("deploy/prometheus")
}

/// The YAML files of a directory, sorted; there must be some.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML file in {}", dir.display());
    files
}

fn read_yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn seq_of<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Runs promtool with `args` and `files`: success and its whole output.
fn promtool(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(project_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): install the Debian package prometheus (scripts/test does)")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A rule of a rules file: the group it is in and its YAML.
struct Rule {
    group: String,
    rule: Value,
}

impl Rule {
    fn name(&self) -> &str {
        str_of(&self.rule, "record")
            .or_else(|| str_of(&self.rule, "alert"))
            .unwrap()
    }

    fn expr(&self) -> &str {
        str_of(&self.rule, "expr").unwrap()
    }

    fn is_alert(&self) -> bool {
        self.rule.get("alert").is_some()
    }
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in yaml_files(&prometheus_dir().join("rules")) {
        for group in seq_of(&read_yaml(&file), "groups") {
            let name = str_of(group, "name").unwrap().to_string();
            for rule in seq_of(group, "rules") {
                out.push(Rule {
                    group: name.clone(),
                    rule: rule.clone(),
                });
            }
        }
    }
    out
}

#[test]
fn promtool_checks_every_rules_file() {
    let files = yaml_files(&prometheus_dir().join("rules"));
    let (ok, out) = promtool(&["check", "rules"], &files);
    assert!(ok, "promtool check rules failed:\n{out}");
    let found: usize = Regex::new(r"SUCCESS: (\d+) rules found")
        .unwrap()
        .captures_iter(&out)
        .map(|c| c[1].parse::<usize>().unwrap())
        .sum();
    assert_eq!(found, rules().len(), "promtool saw other rules:\n{out}");
    assert_eq!(found, RECORDING_RULES.len() + ALERTS.len());
}

#[test]
fn promtool_unit_tests_pass() {
    let files = yaml_files(&prometheus_dir().join("tests"));
    let (ok, out) = promtool(&["test", "rules"], &files);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert_eq!(
        out.matches("SUCCESS").count(),
        files.len(),
        "not every test file passed:\n{out}"
    );
}

#[test]
fn recording_rules_have_the_names_the_dashboards_use() {
    let rules = rules();
    let recorded: Vec<&str> = rules
        .iter()
        .filter(|r| !r.is_alert())
        .map(Rule::name)
        .collect();
    let expected: BTreeSet<&str> = RECORDING_RULES.iter().copied().collect();
    assert_eq!(recorded.len(), expected.len(), "duplicates: {recorded:?}");
    assert_eq!(recorded.iter().copied().collect::<BTreeSet<_>>(), expected);
    for r in rules.iter().filter(|r| !r.is_alert()) {
        assert_eq!(r.group, RECORDING_GROUP, "{}", r.name());
        assert!(
            r.rule.get("labels").is_none(),
            "{}: no static labels",
            r.name()
        );
    }
}

/// The anchors GitHub gives the headings of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let runbooks = fs::read_to_string(project_dir().join("docs/runbooks.md")).unwrap();
    let anchors = anchors(&runbooks);
    let rules = rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.is_alert()).collect();
    let names: Vec<&str> = alerts.iter().map(|r| r.name()).collect();
    assert_eq!(
        names.iter().copied().collect::<BTreeSet<_>>(),
        ALERTS.iter().copied().collect::<BTreeSet<_>>()
    );
    assert_eq!(names.len(), ALERTS.len(), "duplicates: {names:?}");
    for a in alerts {
        let name = a.name();
        assert_eq!(a.group, ALERT_GROUP, "{name}");
        let labels = a
            .rule
            .get("labels")
            .unwrap_or_else(|| panic!("{name}: no labels"));
        let severity = str_of(labels, "severity");
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        let ann = a
            .rule
            .get("annotations")
            .unwrap_or_else(|| panic!("{name}: no annotations"));
        for key in ["summary", "description", "runbook_url"] {
            let v = str_of(ann, key).unwrap_or_default();
            assert!(!v.trim().is_empty(), "{name}: no {key}");
        }
        let anchor = name.to_lowercase();
        assert_eq!(
            str_of(ann, "runbook_url").unwrap(),
            format!("{RUNBOOKS}#{anchor}"),
            "{name}"
        );
        assert!(
            anchors.contains(&anchor),
            "{name}: docs/runbooks.md has no section #{anchor}"
        );
        assert!(
            str_of(ann, "description").unwrap().contains("{{"),
            "{name}: the description should give the alert's values"
        );
    }
}

/// Every family the exporter can expose and its label names (`le` not included): its own metrics
/// from a real exposition, and the families of snapshots, the delivery history and the probes from
/// their specs (they appear once there is something to report).
fn exposed() -> BTreeMap<String, BTreeSet<String>> {
    let publisher = Publisher::detached(Derivation::new(&Settings::default())).unwrap();
    let m = publisher.telemetry();
    m.sync_succeeded(Mode::Full, 1.0, 1.0, 0);
    m.api_latency().with_label_values(&["probe"]).observe(0.1);
    publisher.refresh();
    let text = String::from_utf8(publisher.current().text().to_vec()).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.entry(rest.split(' ').next().unwrap().to_string())
                .or_default();
        } else if let Some(c) = sample.captures(line) {
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| c[1].strip_suffix(s).filter(|b| out.contains_key(*b)))
                .unwrap_or(&c[1])
                .to_string();
            let labels = c.get(2).map_or("", |m| m.as_str());
            let family = out.entry(name).or_default();
            for l in label.captures_iter(labels) {
                if &l[1] != "le" {
                    family.insert(l[1].to_string());
                }
            }
        }
    }
    let all = specs()
        .into_iter()
        .chain(delivery::HISTORY_SPECS.iter().copied())
        .chain(probes::SPECS.iter().copied());
    for s in all {
        let family = out.entry(s.name.to_string()).or_default();
        family.extend(s.label_names(&[]));
        if per_workspace(s.name) {
            family.insert("workspace".to_string());
        }
    }
    out
}

/// The text of every rule that reaches PromQL: its expression and its annotations (which query
/// Prometheus through templates).
fn promql_texts(rule: &Rule) -> Vec<String> {
    let mut v = vec![rule.expr().to_string()];
    if let Some(ann) = rule.rule.get("annotations").and_then(Value::as_mapping) {
        v.extend(ann.values().filter_map(Value::as_str).map(str::to_string));
    }
    v
}

#[test]
fn rules_use_only_metrics_and_labels_the_exporter_exposes() {
    let exposed = exposed();
    let rules = rules();
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| !r.is_alert())
        .map(Rule::name)
        .collect();
    let ident = Regex::new(r"\bmlflow[_:][a-zA-Z0-9_:]*").unwrap();
    let selector = Regex::new(r"\b(mlflow_[a-zA-Z0-9_]*)\s*\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap();
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let family_of = |name: &str| -> Option<(&String, &BTreeSet<String>)> {
        exposed.get_key_value(name).or_else(|| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).and_then(|b| exposed.get_key_value(b)))
        })
    };
    // The labels a recording rule's series can carry: those of the families it reads.
    let mut rule_labels: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in rules.iter().filter(|r| !r.is_alert()) {
        let labels = rule_labels.entry(r.name()).or_default();
        for m in ident.find_iter(r.expr()) {
            if let Some((_, l)) = family_of(m.as_str()) {
                labels.extend(l.iter().cloned());
            }
        }
    }
    let mut problems = Vec::new();
    for r in &rules {
        let texts = promql_texts(r);
        // Labels a grouping clause of this rule may name: those of the families it reads.
        let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        known.insert("le".into());
        for text in &texts {
            for m in ident.find_iter(text) {
                let name = m.as_str();
                if name.contains(':') {
                    if !recorded.contains(name) {
                        problems.push(format!("{}: {name} is not a recording rule", r.name()));
                    }
                    known.extend(rule_labels.get(name).into_iter().flatten().cloned());
                } else if let Some((_, labels)) = family_of(name) {
                    known.extend(labels.iter().cloned());
                } else {
                    problems.push(format!("{}: the exporter exposes no {name}", r.name()));
                }
            }
            for c in selector.captures_iter(text) {
                let Some((family, labels)) = family_of(&c[1]) else {
                    continue;
                };
                for l in matcher.captures_iter(&c[2]) {
                    let l = &l[1];
                    let ok = labels.contains(l)
                        || TARGET_LABELS.contains(&l)
                        || (l == "le" && c[1].ends_with("_bucket"));
                    if !ok {
                        problems.push(format!("{}: {family} has no label {l}", r.name()));
                    }
                }
            }
        }
        for c in grouping.captures_iter(r.expr()) {
            for l in c[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                if !known.contains(l) {
                    problems.push(format!("{}: no family it reads has label {l}", r.name()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Experiment and model names are unique only inside a workspace (MLflow 3): a rule that keeps the
/// experiment or the model (`by`, `on`, a selector in an annotation's query) keeps the workspace
/// with it, or two workspaces' `churn` would be added together or matched with each other. People
/// are counted from the `mlflow_platform_*` families, unless grouped by workspace.
#[test]
fn rules_keep_the_workspace_with_the_experiment_or_the_model() {
    let ident = Regex::new(r"\bmlflow_[a-zA-Z0-9_]*").unwrap();
    let grouping = Regex::new(r"\b(by|on)\s*\(([^)]*)\)").unwrap();
    let selector = Regex::new(r"\b(mlflow_[a-zA-Z0-9_]*)\s*\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap();
    let base = |name: &str| -> String {
        ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_string()
    };
    let mut problems = Vec::new();
    for r in &rules() {
        for text in promql_texts(r) {
            let read: BTreeSet<String> = ident.find_iter(&text).map(|m| base(m.as_str())).collect();
            let scoped: Vec<&String> = read.iter().filter(|f| per_workspace(f)).collect();
            let groupings: Vec<Vec<&str>> = grouping
                .captures_iter(&text)
                .map(|c| {
                    c.get(2)
                        .unwrap()
                        .as_str()
                        .split(',')
                        .map(str::trim)
                        .collect()
                })
                .collect();
            if !scoped.is_empty() {
                for g in &groupings {
                    let keeps_name = g.contains(&"experiment") || g.contains(&"model");
                    if keeps_name && !g.contains(&"workspace") {
                        problems.push(format!(
                            "{}: ({}) over {scoped:?} keeps the name but not the workspace",
                            r.name(),
                            g.join(", ")
                        ));
                    }
                }
            }
            for c in selector.captures_iter(&text) {
                let names: Vec<String> = matcher
                    .captures_iter(&c[2])
                    .map(|m| m[1].to_string())
                    .collect();
                let keeps_name = names.iter().any(|n| n == "experiment" || n == "model");
                if per_workspace(&base(&c[1]))
                    && keeps_name
                    && !names.iter().any(|n| n == "workspace")
                {
                    problems.push(format!(
                        "{}: {}{{{}}} names the experiment or the model but not the workspace",
                        r.name(),
                        &c[1],
                        &c[2]
                    ));
                }
            }
            for people in read.iter().filter(|f| workspace::counts_people(f)) {
                if !groupings.iter().any(|g| g.contains(&"workspace")) {
                    problems.push(format!(
                        "{}: {people} is per workspace with workspaces (a person in two counts twice): read mlflow_platform_{}",
                        r.name(),
                        people.trim_start_matches("mlflow_")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unit_tests_cover_every_rule() {
    let rules_dir = prometheus_dir().join("rules");
    let rule_files: BTreeSet<PathBuf> = yaml_files(&rules_dir)
        .into_iter()
        .map(|p| p.canonicalize().unwrap())
        .collect();
    // alert -> (eval times it fires at, eval times it is quiet at); recording rule -> checks.
    let mut fires: BTreeMap<String, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<String, usize> = BTreeMap::new();
    let mut pinned: BTreeMap<&str, usize> = BTreeMap::new();
    let mut cases = 0;
    for file in yaml_files(&prometheus_dir().join("tests")) {
        let doc = read_yaml(&file);
        let name = file.display();
        let dir = file.parent().unwrap();
        let loaded: BTreeSet<PathBuf> = seq_of(&doc, "rule_files")
            .iter()
            .map(|p| dir.join(p.as_str().unwrap()).canonicalize().unwrap())
            .collect();
        assert_eq!(loaded, rule_files, "{name}: must load every rules file");
        let order: Vec<&str> = seq_of(&doc, "group_eval_order")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            order,
            [RECORDING_GROUP, ALERT_GROUP],
            "{name}: recording rules must be evaluated before the alerts that read them"
        );
        for test in seq_of(&doc, "tests") {
            for a in seq_of(test, "alert_rule_test") {
                cases += 1;
                let alert = str_of(a, "alertname").unwrap().to_string();
                let firing = seq_of(a, "exp_alerts");
                if firing.is_empty() {
                    *quiet.entry(alert).or_default() += 1;
                } else {
                    for f in firing {
                        let ann = f.get("exp_annotations").and_then(Value::as_mapping);
                        assert!(
                            ann.is_some_and(|m| m.len() == 3),
                            "{name}: {alert} fires without all three annotations checked"
                        );
                    }
                    *fires.entry(alert).or_default() += 1;
                }
            }
            for p in seq_of(test, "promql_expr_test") {
                cases += 1;
                let expr = str_of(p, "expr").unwrap();
                if seq_of(p, "exp_samples").is_empty() {
                    continue;
                }
                for r in RECORDING_RULES {
                    let used = expr.match_indices(r).any(|(i, _)| {
                        !expr[i + r.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                    if used {
                        *pinned.entry(r).or_default() += 1;
                    }
                }
            }
        }
    }
    for a in ALERTS {
        assert!(fires.contains_key(*a), "no unit test makes {a} fire");
        assert!(quiet.contains_key(*a), "no unit test keeps {a} quiet");
    }
    for r in RECORDING_RULES {
        assert!(
            pinned.contains_key(r),
            "no unit test checks the value of {r}"
        );
    }
    println!("{cases} promtool test cases");
}
