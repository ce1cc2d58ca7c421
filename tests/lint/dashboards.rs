//! Lints the Grafana boards in grafana/dashboards/ and their provisioning in grafana/provisioning/:
//! JSON, unique uids (across boards) and panel ids, `${datasource}` on all panels, queries and query
//! variables, titles, descriptions, units, panel types and layout, template variables (known metrics
//! and labels, defined before use, used, multi-value ones matched with `=~`); PromQL that parses
//! (promtool) and uses only names the exporter exposes (its own families, the delivery and probe
//! families, the process collector's) or the recording rules of deploy/prometheus/rules/, each with
//! the labels it carries. The DORA performance bands of the North Star board are evaluated by
//! promtool against the bands of the reference. Workspaces (MLflow 3): every board has the
//! `workspace` variable, a grouping that keeps an experiment or a model keeps its workspace, and
//! per-workspace people counts are not added up over workspaces.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde_json::Value;

mod promql;

use crate::support::project_dir;
use promql::{catalogue, is_ident, strip_strings, Lint, Var, CONFIG, RULES};

const DATASOURCE: &str = "${datasource}";
/// Panel types Grafana has deprecated (replaced by timeseries, stat, table, piechart).
const DEPRECATED_PANELS: &[&str] = &["graph", "singlestat", "table-old", "grafana-piechart-panel"];
/// Core panel types of current Grafana a board may use: anything else renders as an error.
const PANEL_TYPES: &[&str] = &[
    "row",
    "stat",
    "timeseries",
    "bargauge",
    "gauge",
    "table",
    "state-timeline",
    "status-history",
    "barchart",
    "piechart",
    "heatmap",
    "histogram",
    "text",
];
/// Every board carries this tag: the boards' "MLflow boards" link menu lists boards by it.
const TAG: &str = "mlflow";
/// The workspaces of a workspace-enabled MLflow 3: every board's variable right after the data
/// source, "All" (`.*`, which also matches series without the label) on an MLflow without them.
const WORKSPACE_QUERY: &str = "label_values(mlflow_runs, workspace)";

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A panel's, target's or variable's data source must be the board's `datasource` variable.
fn check_datasource(v: &Value, at: &str, errs: &mut Vec<String>) {
    let ds = v.get("datasource");
    let uid = ds.and_then(|d| d.get("uid")).and_then(Value::as_str);
    let kind = ds.and_then(|d| d.get("type")).and_then(Value::as_str);
    if uid != Some(DATASOURCE) || kind.is_some_and(|k| k != "prometheus") {
        errs.push(format!(
            "{at}: datasource must be {{\"type\":\"prometheus\",\"uid\":\"{DATASOURCE}\"}}, is {}",
            ds.map_or("missing".to_string(), Value::to_string)
        ));
    }
}

/// Every panel, those nested in (collapsed) rows included.
fn all_panels(panels: &[Value], out: &mut Vec<Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(nested) = p.get("panels").and_then(Value::as_array) {
            all_panels(nested, out);
        }
    }
}

/// The variable's saved current value, when it is a single concrete one.
fn current_value(v: &Value) -> Option<String> {
    let value = v.pointer("/current/value")?;
    let one = match value {
        Value::String(s) => s.as_str(),
        Value::Array(a) if a.len() == 1 => a[0].as_str()?,
        _ => return None,
    };
    (!one.is_empty() && one != "$__all").then(|| one.to_string())
}

/// The query string of a query variable (a plain string or the query editor's object).
fn variable_query(v: &Value) -> &str {
    v.get("query")
        .and_then(|q| {
            q.as_str()
                .or_else(|| q.get("query").and_then(Value::as_str))
        })
        .unwrap_or("")
}

fn grid(p: &Value) -> Option<[i64; 4]> {
    let g = p.get("gridPos")?;
    let n = |k: &str| g.get(k).and_then(Value::as_i64);
    Some([n("x")?, n("y")?, n("w")?, n("h")?])
}

/// Lints one board; returns its problems and its queries (name, expression) for promtool.
fn lint_board(lint: &Lint, file: &str, board: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let mut errs = Vec::new();
    let mut exprs = Vec::new();
    for key in ["uid", "title", "description"] {
        if str_of(board, key).trim().is_empty() {
            errs.push(format!("{file}: empty or missing {key}"));
        }
    }
    let schema = board.get("schemaVersion").and_then(Value::as_u64);
    if schema.is_none_or(|s| s < 39) {
        errs.push(format!(
            "{file}: schemaVersion {schema:?}, expected 39 or later"
        ));
    }
    if board.get("id").is_some_and(|id| !id.is_null()) {
        errs.push(format!(
            "{file}: id must be null (Grafana assigns it; boards are known by uid)"
        ));
    }
    let tags = board.get("tags").and_then(Value::as_array);
    if !tags.is_some_and(|t| t.iter().any(|t| t == TAG)) {
        errs.push(format!(
            "{file}: no tag {TAG:?} (the boards' link menu lists boards by it)"
        ));
    }

    // Template variables, in order: a variable's query may use only the variables before it.
    let vars: Vec<Value> = board
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !vars.iter().any(|v| {
        str_of(v, "name") == "datasource"
            && str_of(v, "type") == "datasource"
            && str_of(v, "query") == "prometheus"
    }) {
        errs.push(format!(
            "{file}: no templating variable `datasource` of type datasource (query prometheus)"
        ));
    }
    // The workspaces of a workspace-enabled MLflow 3, right after the data source; "All" (`.*`)
    // by default, which is all there is on an MLflow without workspaces.
    match vars.iter().position(|v| str_of(v, "name") == "workspace") {
        None => errs.push(format!(
            "{file}: no templating variable `workspace` ({WORKSPACE_QUERY})"
        )),
        Some(i) => {
            let v = &vars[i];
            let at = format!("{file}: variable workspace");
            let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
            if i != 1 || str_of(&vars[0], "name") != "datasource" {
                errs.push(format!("{at}: must come right after datasource"));
            }
            if str_of(v, "type") != "query" || variable_query(v) != WORKSPACE_QUERY {
                errs.push(format!("{at}: must be the query {WORKSPACE_QUERY}"));
            }
            if !flag("multi") || !flag("includeAll") || str_of(v, "allValue") != ".*" {
                errs.push(format!(
                    "{at}: must be multi-value with All as `.*` (which matches series without the label)"
                ));
            }
            if v.get("refresh").and_then(Value::as_u64) != Some(2) {
                errs.push(format!(
                    "{at}: must refresh on time range change (refresh 2)"
                ));
            }
            if current_value(v).is_some() || str_of(v, "description").trim().is_empty() {
                errs.push(format!("{at}: must default to All and have a description"));
            }
        }
    }
    let function =
        Regex::new(r"^\s*(label_values|label_names|query_result)\s*\((.*)\)\s*$").unwrap();
    let mut defined: BTreeMap<String, Var> = BTreeMap::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for v in &vars {
        let name = str_of(v, "name");
        let at = format!("{file}: variable {name}");
        if name.is_empty() || defined.contains_key(name) {
            errs.push(format!("{at}: empty or duplicate name"));
        }
        if str_of(v, "type") == "query" {
            check_datasource(v, &at, &mut errs);
            let query = variable_query(v);
            if let Some(def) = v.get("definition").and_then(Value::as_str) {
                if def != query {
                    errs.push(format!(
                        "{at}: definition {def:?} differs from the query {query:?}"
                    ));
                }
            }
            lint.variables(query, &defined, &at, &mut errs);
            lint.multi_values_by_regex(query, &defined, &at, &mut errs);
            used.extend(lint.var_names(query).into_iter().map(String::from));
            let q = strip_strings(query);
            let refs = lint.refs(&q, &at, &mut errs);
            lint.selectors(&q, &at, &mut errs);
            match function.captures(query) {
                None => errs.push(format!(
                    "{at}: query must be label_values(metric, label), label_names(metric) or \
                     query_result(expr), is {query:?}"
                )),
                Some(c) => {
                    if refs.is_empty() {
                        errs.push(format!(
                            "{at}: {} must name a metric of the exporter (else it reads all of \
                             Prometheus)",
                            &c[1]
                        ));
                    }
                    let arg = c.get(2).unwrap().as_str();
                    let selector = match (&c[1], arg.rsplit_once(',')) {
                        ("label_values", Some((selector, label))) => {
                            for (_, r) in &refs {
                                if !r.allowed.contains(label.trim()) {
                                    errs.push(format!(
                                        "{at}: {} has no label {}",
                                        r.name,
                                        label.trim()
                                    ));
                                }
                            }
                            selector
                        }
                        ("label_values", None) => {
                            errs.push(format!("{at}: label_values without a metric"));
                            arg
                        }
                        ("query_result", _) => {
                            lint.expr(&lint.concrete(arg, &defined), &at, &mut errs);
                            arg
                        }
                        _ => arg,
                    };
                    exprs.push((
                        format!("var_{name}"),
                        lint.concrete(selector.trim(), &defined),
                    ));
                }
            }
        }
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        defined.insert(
            name.to_string(),
            Var {
                multi: flag("multi") || flag("includeAll"),
                current: current_value(v),
            },
        );
    }

    let top: &[Value] = board
        .get("panels")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut panels = Vec::new();
    all_panels(top, &mut panels);
    if panels.is_empty() {
        errs.push(format!("{file}: no panels"));
    }
    // Layout: on the 24-column grid, no two panels on the same cells.
    let mut placed: Vec<(String, [i64; 4])> = Vec::new();
    for p in top {
        let at = format!("{file}: panel {:?}", str_of(p, "title"));
        let Some([x, y, w, h]) = grid(p) else {
            errs.push(format!("{at}: missing or incomplete gridPos"));
            continue;
        };
        if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
            errs.push(format!(
                "{at}: gridPos {x},{y} {w}x{h} is off the 24-column grid"
            ));
        }
        for (other, [ox, oy, ow, oh]) in &placed {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                errs.push(format!("{at}: overlaps panel {other:?}"));
            }
        }
        placed.push((str_of(p, "title").to_string(), [x, y, w, h]));
    }
    let mut ids = BTreeSet::new();
    for p in &panels {
        let kind = str_of(p, "type");
        let title = str_of(p, "title");
        let id = p.get("id").map_or("(no id)".to_string(), Value::to_string);
        let at = format!("{file}: panel {id} \"{title}\"");
        match p.get("id").and_then(Value::as_u64) {
            Some(id) if !ids.insert(id) => errs.push(format!("{at}: duplicate panel id {id}")),
            Some(_) => {}
            None => errs.push(format!("{at}: missing or non-integer id")),
        }
        used.extend(lint.var_names(title).into_iter().map(String::from));
        lint.variables(title, &defined, &at, &mut errs);
        if kind == "row" {
            if p.get("datasource").is_some_and(|d| !d.is_null()) {
                check_datasource(p, &at, &mut errs);
            }
            continue;
        }
        if DEPRECATED_PANELS.contains(&kind) {
            errs.push(format!("{at}: deprecated panel type {kind}"));
        } else if !PANEL_TYPES.contains(&kind) {
            errs.push(format!("{at}: unknown panel type {kind:?}"));
        }
        for (what, value) in [
            ("title", title),
            ("description", str_of(p, "description")),
            (
                "fieldConfig.defaults.unit",
                p.pointer("/fieldConfig/defaults/unit")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            ),
        ] {
            if value.trim().is_empty() {
                errs.push(format!("{at}: empty or missing {what}"));
            }
        }
        check_datasource(p, &at, &mut errs);
        let targets = p
            .get("targets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if targets.is_empty() {
            errs.push(format!("{at}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            let ref_id = str_of(t, "refId");
            let at = format!("{at} target {ref_id}");
            if ref_id.is_empty() || !refs.insert(ref_id) {
                errs.push(format!("{at}: empty or duplicate refId"));
            }
            check_datasource(t, &at, &mut errs);
            let expr = str_of(t, "expr");
            if expr.trim().is_empty() {
                errs.push(format!("{at}: empty or missing expr"));
                continue;
            }
            lint.variables(expr, &defined, &at, &mut errs);
            lint.multi_values_by_regex(expr, &defined, &at, &mut errs);
            used.extend(lint.var_names(expr).into_iter().map(String::from));
            let concrete = lint.concrete(expr, &defined);
            lint.expr(&concrete, &at, &mut errs);
            let id = p.get("id").and_then(Value::as_u64).unwrap_or(0);
            exprs.push((format!("panel{id}_{ref_id}"), concrete));
        }
    }
    for name in defined.keys().filter(|n| *n != "datasource") {
        if !used.contains(name) {
            errs.push(format!(
                "{file}: variable {name} is used by no panel or variable"
            ));
        }
    }
    (errs, exprs)
}

/// `promtool check rules` on every query written as a recording rule: they must all parse.
fn promtool_parses(exprs: &[(String, String)]) -> Result<(), String> {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (name, expr)) in exprs.iter().enumerate() {
        let name: String = name
            .chars()
            .map(|c| if is_ident(c) { c } else { '_' })
            .collect();
        rules.push_str(&format!(
            "      - record: dashboard:{name}:{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboards.rules.yaml");
    fs::write(&path, &rules).unwrap();
    let out = promtool(&["check", "rules"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains(&format!("SUCCESS: {} rules found", exprs.len())) {
        Ok(())
    } else {
        Err(format!(
            "promtool check rules failed:\n{stdout}{}\nrules:\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn promtool(args: &[&str], file: &Path) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            let hint = "install the Debian package prometheus (scripts/test does)";
            panic!("promtool not found ({e}): {hint}")
        })
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = project_dir().join("grafana/dashboards");
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no *.json under {}", dir.display());
    files
}

fn read_board(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

fn read_yaml(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_catalogue_knows_every_kind_of_metric() {
    let cat = catalogue();
    assert_eq!(cat["mlflow_up"].kind, "gauge");
    assert_eq!(
        cat["mlflow_exporter_api_request_duration_seconds"].kind,
        "histogram"
    );
    assert!(cat["mlflow_exporter_api_request_duration_seconds"]
        .labels
        .contains("endpoint"));
    assert!(cat["mlflow_exporter_sync_duration_seconds"]
        .labels
        .contains("mode"));
    assert_eq!(cat["mlflow_runs_ended_total"].kind, "counter");
    assert!(
        cat["mlflow_runs_ended_total"].labels.contains("estimator"),
        "the extra label of {CONFIG}"
    );
    assert_eq!(
        cat["mlflow_run_cost_total"].labels,
        ["experiment", "instance_type", "team", "workspace"]
            .map(String::from)
            .into()
    );
    // Workspaces (MLflow 3): what names an experiment or a model, people per workspace, sync
    // errors of a workspace; the platform's people counts have no workspace.
    for name in [
        "mlflow_runs",
        "mlflow_model_deployments_total",
        "mlflow_incidents_open",
        "mlflow_model_lead_time_seconds",
        "mlflow_active_users",
        "mlflow_users",
        "mlflow_exporter_sync_errors_total",
        // A probe of a workspace's model (`probes.targets[].workspace`).
        "mlflow_probe_success",
        // What each workspace holds, and creates by team.
        "mlflow_experiments",
        "mlflow_registered_models",
        "mlflow_experiments_created_total",
        "mlflow_prompts_created_total",
    ] {
        assert!(cat[name].labels.contains("workspace"), "{name}");
    }
    for name in [
        "mlflow_platform_users",
        "mlflow_platform_active_users",
        "mlflow_probe_failures_total",
        "mlflow_exporter_corrections_total",
    ] {
        assert!(!cat[name].labels.contains("workspace"), "{name}");
    }
    // Families that appear only after a delivery event or once probes start.
    assert_eq!(cat["mlflow_model_lead_time_seconds"].kind, "histogram");
    assert_eq!(cat["mlflow_incidents_total"].kind, "counter");
    assert_eq!(
        cat["mlflow_probe_duration_seconds"].labels,
        ["alias", "model", "probe", "workspace"]
            .map(String::from)
            .into()
    );
    assert!(cat.contains_key("mlflow_probe_tls_cert_expiry_timestamp_seconds"));
    #[cfg(target_os = "linux")]
    assert!(cat.contains_key("process_resident_memory_bytes"));
    // Recording rules, with the labels they keep.
    let rule = |name: &str| {
        let f = cat
            .get(name)
            .unwrap_or_else(|| panic!("recording rule {name} missing from {RULES}/"));
        assert_eq!(f.kind, "recording rule");
        assert!(!f.scraped, "{name} aggregates instance and job away");
        f.labels.iter().map(String::as_str).collect::<Vec<_>>()
    };
    assert_eq!(rule("mlflow:active_users:count"), ["window"]);
    assert_eq!(
        rule("mlflow:model_deployments:increase7d"),
        ["model", "workspace"]
    );
    assert_eq!(rule("mlflow:cost:increase1d"), Vec::<&str>::new());
    assert_eq!(rule("mlflow:run_cost:increase1d"), ["team"]);
    assert_eq!(rule("mlflow:probe_availability:ratio30d"), ["probe"]);
    assert_eq!(
        rule("mlflow:probe_duration_seconds:p99_5m"),
        ["alias", "model", "probe", "workspace"]
    );
}

#[test]
fn the_lint_catches_what_it_should() {
    let lint = Lint::new();
    let bad = |expr: &str| {
        let mut errs = Vec::new();
        lint.expr(expr, "t", &mut errs);
        errs
    };
    let none = Vec::<String>::new();
    let ok = concat!(
        "histogram_quantile(0.99, sum by (le, endpoint) ",
        r#"(rate(mlflow_exporter_api_request_duration_seconds_bucket{endpoint="x"}[5m])))"#
    );
    assert_eq!(bad(ok), none);
    assert_eq!(
        bad(r#"sum(increase(mlflow_runs_ended_total{status="mlflow_nope"}[1d])) by (status)"#),
        none
    );
    assert_eq!(bad("mlflow_runs_ended").len(), 1, "unknown metric");
    assert_eq!(bad("sum(mlflow_runs_ended_total)").len(), 1, "bare counter");
    assert_eq!(
        bad(r#"mlflow_runs{team="a"}"#).len(),
        1,
        "unknown matcher label"
    );
    assert_eq!(
        bad("sum by (team) (mlflow_runs)").len(),
        1,
        "unknown by label"
    );
    assert_eq!(
        bad("sum(mlflow_runs) by (le)").len(),
        1,
        "le off a histogram"
    );
    assert_eq!(
        bad("sum by (framework) (increase(mlflow_runs_ended_total[1d]))").len(),
        1,
        "an extra label that is not configured"
    );
    assert_eq!(
        bad("sum by (estimator) (increase(mlflow_runs_ended_total[1d]))"),
        none,
        "the extra label configured in {CONFIG}"
    );
    assert_eq!(
        bad(r#"sum by (instance) (mlflow_up{job="mlflow-exporter"})"#),
        none,
        "target labels"
    );
    // Workspaces: the workspace goes with the experiment or the model; people are not added up.
    assert_eq!(
        bad(
            r#"sum by (workspace, experiment) (increase(mlflow_runs_ended_total{workspace=~".*"}[1d]))"#
        ),
        none
    );
    assert_eq!(
        bad("sum by (experiment) (increase(mlflow_runs_ended_total[1d]))").len(),
        1,
        "same-named experiments of two workspaces added together"
    );
    assert_eq!(
        bad("histogram_quantile(0.5, sum by (le, model) (rate(mlflow_model_lead_time_seconds_bucket[1d])))").len(),
        1,
        "same-named models of two workspaces added together"
    );
    assert_eq!(
        bad("sum by (le, probe, model, alias) (rate(mlflow_probe_duration_seconds_bucket[5m]))")
            .len(),
        1,
        "a probe of a workspace's model has its workspace"
    );
    assert_eq!(
        bad(r#"max(mlflow_active_users{window="1d"})"#).len(),
        1,
        "people overcounted"
    );
    assert_eq!(
        bad(r#"max(mlflow_platform_active_users{window="1d"})"#),
        none
    );
    assert_eq!(
        bad(r#"max by (workspace) (mlflow_active_users{workspace=~".*", window="1d"})"#),
        none
    );
    assert_eq!(
        bad("histogram_quantile(0.5, sum by (le) (mlflow_model_lead_time_seconds_bucket))").len(),
        1,
        "buckets of events through rate()"
    );
    assert_eq!(
        bad(
            "histogram_quantile(0.5, max by (le) (mlflow_user_time_to_first_model_seconds_bucket))"
        ),
        none,
        "a histogram of the current users is read as it is"
    );
    // Recording rules: known names, only the labels they keep.
    assert_eq!(bad(r#"mlflow:run_cost:increase1d{team="a"}"#), none);
    assert_eq!(bad("mlflow:nope:ratio1d").len(), 1, "unknown rule");
    assert_eq!(
        bad(r#"mlflow:cost:increase1d{team="a"}"#).len(),
        1,
        "summed away by the rule"
    );
    assert_eq!(
        bad("max by (instance) (mlflow:deployments:increase7d)").len(),
        1,
        "rules aggregate the target labels away"
    );

    let vars = BTreeMap::from([
        (
            "team".to_string(),
            Var {
                multi: true,
                current: None,
            },
        ),
        (
            "extra_label".to_string(),
            Var {
                multi: false,
                current: Some("estimator".into()),
            },
        ),
    ]);
    assert_eq!(
        lint.concrete(
            r#"sum by ($extra_label) (rate(mlflow_runs_ended_total{team=~"$team"}[$__rate_interval]))"#,
            &vars
        ),
        r#"sum by (estimator) (rate(mlflow_runs_ended_total{team=~".*"}[5m]))"#
    );
    let capture = r#"label_replace(mlflow_runs{experiment=~"$team"}, "experiment", "$1", "experiment", "/(.*)")"#;
    assert_eq!(
        lint.concrete(capture, &vars),
        capture.replace("$team", ".*"),
        "a label_replace capture is no variable"
    );
    assert_eq!(lint.var_names(capture), ["team"]);
    let mut errs = Vec::new();
    lint.multi_values_by_regex(r#"mlflow_runs{experiment="$team"}"#, &vars, "t", &mut errs);
    lint.multi_values_by_regex(r#"mlflow_runs{experiment=~"$team"}"#, &vars, "t", &mut errs);
    assert_eq!(errs.len(), 1, "{errs:?}");
}

#[test]
fn the_board_lint_catches_what_it_should() {
    let lint = Lint::new();
    let ds = serde_json::json!({"type": "prometheus", "uid": DATASOURCE});
    let var = |name: &str, query: &str| {
        serde_json::json!({"name": name, "type": "query", "datasource": ds, "multi": true,
            "includeAll": true, "query": {"qryType": 1, "query": query}, "definition": query})
    };
    let panel = |id: u64, kind: &str, x: u64, unit: &str, expr: &str| {
        serde_json::json!({"id": id, "type": kind, "title": format!("p{id}"), "description": "d",
            "datasource": ds, "gridPos": {"x": x, "y": 0, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}},
            "targets": [{"refId": "A", "datasource": ds, "expr": expr}]})
    };
    let board = serde_json::json!({
        "uid": "t", "title": "t", "description": "t", "schemaVersion": 41, "id": 3,
        "tags": ["mlflow"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            var("team", "label_values(mlflow_nope, team)"),
            var("experiment", r#"label_values(mlflow_runs{experiment=~"$later"}, experiment)"#),
            var("later", "label_values(mlflow_runs, status)"),
            var("all", "label_values(team)"),
        ]},
        "panels": [
            panel(1, "stat", 0, "short", r#"sum(mlflow_runs{experiment="$experiment"})"#),
            panel(2, "graph", 6, "", "sum(mlflow_runs)"),
            panel(2, "stats", 12, "short", "sum(mlflow_runs)"),
        ],
    });
    let (errs, _) = lint_board(&lint, "t.json", &board);
    for expected in [
        "no templating variable `workspace`",
        "id must be null",
        "variable team: unknown metric mlflow_nope",
        "variable experiment: undefined variable $later",
        "variable team is used by no panel or variable",
        "variable all: label_values must name a metric",
        "compares experiment with the multi-value $experiment",
        "deprecated panel type graph",
        "unknown panel type \"stats\"",
        "panel 2 \"p2\": empty or missing fieldConfig.defaults.unit",
        "duplicate panel id 2",
        "panel \"p2\": overlaps panel \"p1\"",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "no error containing {expected:?} in:\n{}",
            errs.join("\n")
        );
    }
}

/// The boards, by stable uid: links and bookmarks point at these.
const BOARDS: &[&str] = &[
    "mlflow-north-star",
    "mlflow-adoption",
    "mlflow-delivery",
    "mlflow-cost",
    "mlflow-reliability",
];

#[test]
fn every_dashboard_passes_the_lint() {
    let lint = Lint::new();
    let mut errs = Vec::new();
    let mut exprs = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    for path in dashboard_files() {
        let file = path
            .strip_prefix(project_dir())
            .unwrap()
            .display()
            .to_string();
        let board: Value = match serde_json::from_str(&fs::read_to_string(&path).unwrap()) {
            Ok(b) => b,
            Err(e) => {
                errs.push(format!("{file}: invalid JSON: {e}"));
                continue;
            }
        };
        let uid = str_of(&board, "uid").to_string();
        if let Some(other) = uids.insert(uid.clone(), file.clone()) {
            errs.push(format!("{file}: uid {uid:?} also used by {other}"));
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if stem != uid {
            errs.push(format!(
                "{file}: the file is not named after its uid {uid:?}"
            ));
        }
        let (e, x) = lint_board(&lint, &file, &board);
        errs.extend(e);
        exprs.extend(x.into_iter().map(|(n, e)| (format!("{stem}_{n}"), e)));
    }
    for uid in BOARDS {
        if !uids.contains_key(*uid) {
            errs.push(format!("no board with uid {uid}"));
        }
    }
    assert!(
        errs.is_empty(),
        "{} problem(s):\n{}",
        errs.len(),
        errs.join("\n")
    );
    if let Err(e) = promtool_parses(&exprs) {
        panic!("{e}");
    }
}

/// DORA performance bands (2023 State of DevOps, as ../shared/reference/prometheus-conventions.md
/// and the README state them): the elite, high and medium limits of each figure.
const LEAD_TIME_BANDS: [f64; 3] = [3600.0, 604_800.0, 15_552_000.0]; // < 1 h, < 1 week, < 6 months
const RESTORE_BANDS: [f64; 3] = [3600.0, 86_400.0, 604_800.0]; // < 1 h, < 1 day, < 1 week
const FAILURE_RATE_BANDS: [f64; 3] = [0.05, 0.10, 0.15]; // ≤ 5 %, ≤ 10 %, ≤ 15 %

/// One `promtool test rules` group: input series at `interval`, and (expr, time, value) checks.
fn promtool_group(
    name: &str,
    interval: &str,
    series: &[(&str, String)],
    checks: &[(&str, &str, f64)],
) -> String {
    let mut out = format!(
        "  - name: {}\n    interval: {interval}\n    input_series:\n",
        serde_json::to_string(name).unwrap()
    );
    for (s, values) in series {
        out.push_str(&format!(
            "      - series: '{s}'\n        values: '{values}'\n"
        ));
    }
    out.push_str("    promql_expr_test:\n");
    for (expr, at, value) in checks {
        out.push_str(&format!(
            "      - expr: {}\n        eval_time: {at}\n        exp_samples:\n          - labels: '{{}}'\n            value: {value}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    out
}

#[test]
fn dora_bands_follow_the_reference() {
    let board = read_board(&project_dir().join("grafana/dashboards/mlflow-north-star.json"));
    let mut panels = Vec::new();
    all_panels(board["panels"].as_array().unwrap(), &mut panels);
    let mut groups = String::new();
    let mut figures = BTreeSet::new();
    for p in &panels {
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        let Some(band) = targets.iter().find(|t| str_of(t, "legendFormat") == "band") else {
            continue;
        };
        let title = str_of(p, "title");
        // The band's values are shown as the band's names, in its colours.
        let mappings = p["fieldConfig"]["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["matcher"]["options"] == band["refId"])
            .and_then(|o| {
                o["properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["id"] == "mappings")
            })
            .unwrap_or_else(|| panic!("{title}: no value mappings on the band"));
        for (value, text) in [("3", "Elite"), ("2", "High"), ("1", "Medium"), ("0", "Low")] {
            assert_eq!(
                mappings["value"][0]["options"][value]["text"], text,
                "{title}: band {value}"
            );
        }
        let band = str_of(band, "expr");
        let figure = str_of(&targets[0], "expr").trim();
        let lower_is_better = |bands: [f64; 3], inclusive: bool| {
            let [e, h, m] = bands;
            let cases: Vec<(f64, f64)> = if inclusive {
                vec![
                    (e, 3.0),
                    ((e + h) / 2.0, 2.0),
                    (h, 2.0),
                    (m, 1.0),
                    (m * 2.0, 0.0),
                ]
            } else {
                vec![
                    (e / 2.0, 3.0),
                    (e, 2.0),
                    ((e + h) / 2.0, 2.0),
                    (h, 1.0),
                    (m, 0.0),
                ]
            };
            let mut values: Vec<String> = cases.iter().map(|(v, _)| v.to_string()).collect();
            values.push("NaN".into());
            let mut checks: Vec<(String, f64)> = cases
                .iter()
                .enumerate()
                .map(|(i, (_, b))| (format!("{i}m"), *b))
                .collect();
            checks.push((format!("{}m", cases.len()), -1.0));
            let checks: Vec<(&str, &str, f64)> =
                checks.iter().map(|(t, b)| (band, t.as_str(), *b)).collect();
            promtool_group(title, "1m", &[(figure, values.join(" "))], &checks)
        };
        let kind = if figure.starts_with("mlflow:lead_time_seconds:") {
            groups.push_str(&lower_is_better(LEAD_TIME_BANDS, false));
            "lead time"
        } else if figure.starts_with("mlflow:time_to_restore_seconds:")
            || figure.starts_with("mlflow:rollback_recovery_seconds:")
        {
            groups.push_str(&lower_is_better(RESTORE_BANDS, false));
            "time to restore"
        } else if figure.starts_with("mlflow:change_failure_rate:") {
            groups.push_str(&lower_is_better(FAILURE_RATE_BANDS, true));
            "change failure rate"
        } else if figure == "mlflow:deployments:increase7d" {
            // Hourly samples over 30 days; evaluated at the end. Elite: deployments on at least 3
            // of the last 7 days; high: at least one in 7 days; medium: at least one in 30.
            for (case, hours, expected) in [
                ("3 days of 7", &[588, 636, 684][..], 3.0),
                ("twice on one day", &[684, 685][..], 2.0),
                ("2 days of 7", &[636, 684][..], 2.0),
                ("8 days ago", &[528][..], 1.0),
                ("once in 30 days", &[240][..], 1.0),
                ("never", &[][..], 0.0),
            ] {
                let counter: Vec<String> = (0..=720)
                    .map(|h| hours.iter().filter(|d| **d <= h).count().to_string())
                    .collect();
                let last_week = hours.iter().filter(|h| **h > 720 - 168).count();
                groups.push_str(&promtool_group(
                    &format!("{title}: {case}"),
                    "1h",
                    &[
                        (
                            "mlflow_model_deployments_total{model=\"m\", alias=\"champion\"}",
                            counter.join(" "),
                        ),
                        (figure, format!("{last_week}+0x720")),
                    ],
                    &[(band, "720h", expected)],
                ));
            }
            "deployment frequency"
        } else {
            panic!("{title}: a band of an unknown figure {figure}");
        };
        figures.insert(kind);
    }
    assert_eq!(
        figures,
        BTreeSet::from([
            "deployment frequency",
            "lead time",
            "change failure rate",
            "time to restore"
        ]),
        "every DORA figure has its band on the North Star board"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bands.test.yaml");
    fs::write(
        &path,
        format!("rule_files: []\nevaluation_interval: 1m\ntests:\n{groups}"),
    )
    .unwrap();
    let out = promtool(&["test", "rules"], &path);
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn provisioning_loads_every_board() {
    let provisioning = project_dir().join("grafana/provisioning");
    let mut paths = Vec::new();
    for f in yaml_files(&provisioning.join("dashboards")) {
        let doc = read_yaml(&f);
        assert_eq!(doc["apiVersion"].as_u64(), Some(1), "{}", f.display());
        for p in doc["providers"].as_sequence().unwrap() {
            assert_eq!(p["type"].as_str(), Some("file"), "{}", f.display());
            let path = p["options"]["path"].as_str().unwrap_or("");
            assert!(
                path.starts_with('/'),
                "{}: absolute options.path",
                f.display()
            );
            paths.push(path.to_string());
        }
    }
    assert_eq!(paths.len(), 1, "one provider, for grafana/dashboards/");
    let path = paths[0].trim_end_matches('/');

    // Where to mount grafana/dashboards/ and grafana/provisioning/: the README says it...
    let readme = fs::read_to_string(project_dir().join("README.md")).unwrap();
    let section = readme
        .split("\n## Grafana\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a ## Grafana section");
    for needle in ["grafana/dashboards/", path, "/etc/grafana/provisioning"] {
        assert!(
            section.contains(needle),
            "README's Grafana section does not mention {needle}"
        );
    }
    // ... and the compose file does it.
    let compose = project_dir().join("deploy/compose/docker-compose.yml");
    if compose.exists() {
        let doc = read_yaml(&compose);
        let mounts: Vec<(PathBuf, String)> = doc["services"]["grafana"]["volumes"]
            .as_sequence()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|v| {
                let mut parts = v.as_str()?.split(':');
                let (src, dst) = (parts.next()?, parts.next()?);
                src.starts_with('.').then(|| {
                    let src = compose.parent().unwrap().join(src);
                    (src.canonicalize().unwrap_or(src), dst.to_string())
                })
            })
            .collect();
        for (dir, at) in [
            ("grafana/dashboards", path),
            ("grafana/provisioning", "/etc/grafana/provisioning"),
        ] {
            let dir = project_dir().join(dir).canonicalize().unwrap();
            assert!(
                mounts.iter().any(|(s, d)| *s == dir && d == at),
                "{} does not mount {} at {at}: {mounts:?}",
                compose.display(),
                dir.display()
            );
        }
    }

    // Every board is in the provided directory; a stock Grafana needs a Prometheus data source.
    for board in dashboard_files() {
        assert_eq!(
            board.parent().unwrap(),
            project_dir().join("grafana/dashboards"),
            "the provider reads grafana/dashboards/ (folders are not used)"
        );
    }
    let mut prometheus = 0;
    let mut defaults = 0;
    for f in yaml_files(&provisioning.join("datasources")) {
        let doc = read_yaml(&f);
        assert_eq!(doc["apiVersion"].as_u64(), Some(1), "{}", f.display());
        for ds in doc["datasources"].as_sequence().unwrap() {
            if ds["type"].as_str() == Some("prometheus") {
                prometheus += 1;
                let url = ds["url"].as_str().unwrap_or("");
                assert!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "{}: url {url:?}",
                    f.display()
                );
            }
            defaults += usize::from(ds["isDefault"].as_bool() == Some(true));
        }
    }
    assert!(prometheus >= 1, "no Prometheus data source provisioned");
    assert!(defaults <= 1, "more than one default data source");
}
