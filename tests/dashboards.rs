//! Lints each board in grafana/dashboards/: JSON, unique uids and panel ids, `${datasource}` on all
//! panels and queries, titles, descriptions, units; PromQL that parses and uses only exposed names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mlflow_exporter::config::Settings;
use mlflow_exporter::metrics::publish::Publisher;
use mlflow_exporter::metrics::{specs, Derivation};
use mlflow_exporter::sync::Mode;
use prometheus::proto::MetricType;
use regex::Regex;
use serde_json::Value;

const DATASOURCE: &str = "${datasource}";
/// Panel types Grafana has deprecated (replaced by timeseries, stat, table, piechart).
const DEPRECATED_PANELS: &[&str] = &["graph", "singlestat", "table-old", "grafana-piechart-panel"];
/// Grafana's built-in variables a query may use, and what promtool sees in their place.
const BUILTIN_VARS: &[(&str, &str)] = &[
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "1d"),
];

/// A metric family the exporter exposes: its type and label names (`le` not included).
#[derive(Debug)]
struct Family {
    kind: &'static str,
    labels: BTreeSet<String>,
}

/// Every family the exporter can expose: its own metrics and the process collector's, read from a
/// real exposition, plus the snapshot-derived families from their specs (they appear after a sync).
fn catalogue() -> BTreeMap<String, Family> {
    let publisher = Publisher::new(Derivation::new(&Settings::default())).unwrap();
    // Vectors without a series are not exposed: give each one, so their labels show.
    let m = &publisher.exporter;
    m.sync_succeeded(Mode::Full, 1.0, 1.0, 0);
    m.sync_succeeded(Mode::Incremental, 1.0, 2.0, 0);
    m.api_latency.with_label_values(&["probe"]).observe(0.1);
    publisher.refresh();
    let text = String::from_utf8(publisher.current().text().to_vec()).unwrap();

    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let kind = match kind {
                "counter" => "counter",
                "gauge" => "gauge",
                "histogram" => "histogram",
                "summary" => "summary",
                _ => "untyped",
            };
            out.insert(
                name.to_string(),
                Family {
                    kind,
                    labels: BTreeSet::new(),
                },
            );
        }
    }
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        let sample = &line[..end];
        let name = if out.contains_key(sample) {
            sample
        } else {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| sample.strip_suffix(s).filter(|b| out.contains_key(*b)))
                .unwrap_or_else(|| panic!("sample {sample} has no # TYPE"))
        };
        let labels = match line[end..].strip_prefix('{') {
            Some(rest) => &rest[..rest.find("} ").unwrap()],
            None => "",
        };
        let family = out.get_mut(name).unwrap();
        for c in label.captures_iter(labels) {
            if &c[1] != "le" && &c[1] != "quantile" {
                family.labels.insert(c[1].to_string());
            }
        }
    }
    for s in specs() {
        let kind = match s.kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            _ => "untyped",
        };
        let family = out.entry(s.name.to_string()).or_insert(Family {
            kind,
            labels: BTreeSet::new(),
        });
        family.labels.extend(s.label_names(&[]));
    }
    out
}

/// How an identifier in a query resolves: the family, and the labels a selector of it may use.
struct Ref<'a> {
    name: &'a str,
    family: &'a Family,
    /// A counter, or a histogram's `_bucket`/`_count`/`_sum`: only meaningful through rate().
    cumulative: bool,
    allowed: BTreeSet<String>,
}

fn resolve<'a>(cat: &'a BTreeMap<String, Family>, ident: &str) -> Option<Ref<'a>> {
    if let Some((name, family)) = cat.get_key_value(ident) {
        return Some(Ref {
            name,
            family,
            cumulative: family.kind == "counter",
            allowed: family.labels.clone(),
        });
    }
    for suffix in ["_bucket", "_count", "_sum"] {
        let Some(base) = ident.strip_suffix(suffix) else {
            continue;
        };
        if let Some((name, family)) = cat.get_key_value(base) {
            if family.kind == "histogram" {
                let mut allowed = family.labels.clone();
                if suffix == "_bucket" {
                    allowed.insert("le".to_string());
                }
                return Some(Ref {
                    name,
                    family,
                    cumulative: true,
                    allowed,
                });
            }
        }
    }
    None
}

/// The query with every string literal emptied, so label values and regexes are not read as names.
fn strip_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            out.push_str("\"\"");
            while let Some(d) = chars.next() {
                if d == '\\' && c != '`' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The byte range of the parenthesised group opening at `open` (forward) or closing at `close`.
fn group_forward(s: &str, open: usize) -> Option<(usize, usize)> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((open, open + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

fn group_backward(s: &str, close: usize) -> Option<(usize, usize)> {
    let mut depth = 0;
    for (i, c) in s[..=close].char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some((i, close + 1));
                }
            }
            _ => {}
        }
    }
    None
}

struct Lint {
    cat: BTreeMap<String, Family>,
    ident: Regex,
    selector: Regex,
    matcher: Regex,
    grouping: Regex,
    range_fn: Regex,
    range_after: Regex,
    variable: Regex,
}

impl Lint {
    fn new() -> Lint {
        Lint {
            cat: catalogue(),
            ident: Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap(),
            selector: Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}").unwrap(),
            matcher: Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap(),
            grouping: Regex::new(r"\b(by|without)\s*\(([^)]*)\)").unwrap(),
            range_fn: Regex::new(r"\b(?:rate|irate|increase)\s*\(\s*$").unwrap(),
            range_after: Regex::new(r"^\s*(?:\{[^}]*\})?\s*\[").unwrap(),
            variable: Regex::new(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]").unwrap(),
        }
    }

    /// Metric references (identifiers starting with mlflow_ or process_) in a string-free query,
    /// with their byte offsets; an unknown name is reported in `errs`.
    fn refs(&self, q: &str, at: &str, errs: &mut Vec<String>) -> Vec<(usize, Ref<'_>)> {
        let mut out = Vec::new();
        for m in self.ident.find_iter(q) {
            let id = m.as_str();
            if !(id.starts_with("mlflow_") || id.starts_with("process_")) {
                continue;
            }
            match resolve(&self.cat, id) {
                Some(r) => out.push((m.start(), r)),
                None => errs.push(format!("{at}: unknown metric {id}")),
            }
        }
        out
    }

    /// Checks one PromQL query: metric names, matcher and grouping labels, counters through rate().
    fn expr(&self, expr: &str, at: &str, errs: &mut Vec<String>) {
        let q = strip_strings(expr);
        for (pos, r) in self.refs(&q, at, errs) {
            let ident_end = pos
                + q[pos..]
                    .find(|c: char| !is_ident(c))
                    .unwrap_or(q.len() - pos);
            if r.cumulative
                && !(self.range_fn.is_match(&q[..pos])
                    && self.range_after.is_match(&q[ident_end..]))
            {
                errs.push(format!(
                    "{at}: {} is a {} and must be used through rate(), irate() or increase()",
                    &q[pos..ident_end],
                    r.family.kind
                ));
            }
        }
        for c in self.selector.captures_iter(&q) {
            let id = &c[1];
            let Some(r) = resolve(&self.cat, id) else {
                continue;
            };
            for m in self.matcher.captures_iter(&c[2]) {
                if !r.allowed.contains(&m[1]) {
                    errs.push(format!(
                        "{at}: {id} has no label {} (labels: {:?})",
                        &m[1], r.allowed
                    ));
                }
            }
        }
        for c in self.grouping.captures_iter(&q) {
            let whole = c.get(0).unwrap();
            let after = q[whole.end()..].trim_start();
            let arg = if after.starts_with('(') {
                group_forward(&q, q.len() - after.len())
            } else {
                let before = q[..whole.start()].trim_end();
                before
                    .ends_with(')')
                    .then(|| group_backward(&q, before.len() - 1))
                    .flatten()
            };
            let Some((from, to)) = arg else {
                errs.push(format!(
                    "{at}: cannot find what `{}` groups",
                    whole.as_str()
                ));
                continue;
            };
            let refs = self.refs(&q[from..to], at, &mut Vec::new());
            for label in c[2].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                for (_, r) in refs.iter().filter(|(_, r)| r.name.starts_with("mlflow_")) {
                    if !r.allowed.contains(label) {
                        errs.push(format!(
                            "{at}: `{} ({})` on {}, which has no label {label} (labels: {:?})",
                            &c[1], &c[2], r.name, r.allowed
                        ));
                    }
                }
            }
        }
    }

    /// Template variables a query uses must exist on the board (or be Grafana's built-ins).
    fn variables(&self, expr: &str, defined: &BTreeSet<String>, at: &str, errs: &mut Vec<String>) {
        for c in self.variable.captures_iter(expr) {
            let name = c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str();
            if !defined.contains(name) && !BUILTIN_VARS.iter().any(|(b, _)| *b == name) {
                errs.push(format!("{at}: undefined variable ${name}"));
            }
        }
    }

    /// The query as promtool should see it: variables replaced by concrete values.
    fn concrete(&self, expr: &str) -> String {
        self.variable
            .replace_all(expr, |c: &regex::Captures| {
                let name = c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str();
                BUILTIN_VARS
                    .iter()
                    .find(|(b, _)| *b == name)
                    .map_or(".*", |(_, v)| v)
                    .to_string()
            })
            .into_owned()
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A panel's or target's data source must be the board's `datasource` variable.
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

/// Lints one board; returns its problems and its queries (name, expression) for promtool.
fn lint_board(lint: &Lint, file: &str, board: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let mut errs = Vec::new();
    let mut exprs = Vec::new();
    for key in ["uid", "title"] {
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

    let vars: Vec<Value> = board
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let defined: BTreeSet<String> = vars.iter().map(|v| str_of(v, "name").to_string()).collect();
    if !vars.iter().any(|v| {
        str_of(v, "name") == "datasource"
            && str_of(v, "type") == "datasource"
            && str_of(v, "query") == "prometheus"
    }) {
        errs.push(format!(
            "{file}: no templating variable `datasource` of type datasource (query prometheus)"
        ));
    }
    for v in vars.iter().filter(|v| str_of(v, "type") == "query") {
        let at = format!("{file}: variable {}", str_of(v, "name"));
        check_datasource(v, &at, &mut errs);
        let query = v
            .get("query")
            .and_then(|q| {
                q.as_str()
                    .or_else(|| q.get("query").and_then(Value::as_str))
            })
            .unwrap_or("");
        let q = strip_strings(query);
        let refs = lint.refs(&q, &at, &mut errs);
        if let Some(rest) = q.trim().strip_prefix("label_values(") {
            if let Some((_, label)) = rest.trim_end_matches(')').rsplit_once(',') {
                for (_, r) in &refs {
                    if !r.allowed.contains(label.trim()) {
                        errs.push(format!("{at}: {} has no label {}", r.name, label.trim()));
                    }
                }
            }
        }
        lint.variables(query, &defined, &at, &mut errs);
    }

    let mut panels = Vec::new();
    all_panels(
        board
            .get("panels")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice),
        &mut panels,
    );
    if panels.is_empty() {
        errs.push(format!("{file}: no panels"));
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
        if kind == "row" {
            if p.get("datasource").is_some_and(|d| !d.is_null()) {
                check_datasource(p, &at, &mut errs);
            }
            continue;
        }
        if DEPRECATED_PANELS.contains(&kind) {
            errs.push(format!("{at}: deprecated panel type {kind}"));
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
        for t in &targets {
            let at = format!("{at} target {}", str_of(t, "refId"));
            check_datasource(t, &at, &mut errs);
            let expr = str_of(t, "expr");
            if expr.trim().is_empty() {
                errs.push(format!("{at}: empty or missing expr"));
                continue;
            }
            lint.expr(expr, &at, &mut errs);
            lint.variables(expr, &defined, &at, &mut errs);
            let id = p.get("id").and_then(Value::as_u64).unwrap_or(0);
            exprs.push((
                format!("panel{id}_{}", str_of(t, "refId")),
                lint.concrete(expr),
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
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            let hint = "install the Debian package prometheus (scripts/test does)";
            panic!("promtool not found ({e}): {hint}")
        });
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

fn dashboard_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards");
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
    assert_eq!(
        cat["mlflow_run_cost_total"].labels,
        ["experiment", "instance_type", "team"]
            .map(String::from)
            .into()
    );
    #[cfg(target_os = "linux")]
    assert!(cat.contains_key("process_resident_memory_bytes"));
}

#[test]
fn the_lint_catches_what_it_should() {
    let lint = Lint::new();
    let bad = |expr: &str| {
        let mut errs = Vec::new();
        lint.expr(expr, "t", &mut errs);
        errs
    };
    let ok = concat!(
        "histogram_quantile(0.99, sum by (le, endpoint) ",
        r#"(rate(mlflow_exporter_api_request_duration_seconds_bucket{endpoint="x"}[5m])))"#
    );
    assert_eq!(bad(ok), Vec::<String>::new());
    assert_eq!(
        bad(r#"sum(increase(mlflow_runs_ended_total{status="mlflow_nope"}[1d])) by (status)"#),
        Vec::<String>::new()
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
        bad("sum by (estimator) (increase(mlflow_runs_ended_total[1d]))").len(),
        1,
        "extra labels are not configured"
    );
}

#[test]
fn every_dashboard_passes_the_lint() {
    let lint = Lint::new();
    let mut errs = Vec::new();
    let mut exprs = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    for path in dashboard_files() {
        let file = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
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
        let (e, x) = lint_board(&lint, &file, &board);
        errs.extend(e);
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        exprs.extend(x.into_iter().map(|(n, e)| (format!("{stem}_{n}"), e)));
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
