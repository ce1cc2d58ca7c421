//! A scanner of the PromQL in the boards, good for the shapes their queries take (promtool parses
//! them): the catalogue of names a query may use (the exporter's families and the recording rules
//! of deploy/prometheus/rules/, each with its labels) and the checks of one query against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;

use mlflow_exporter::config::{FlagOverrides, Settings};
use mlflow_exporter::exposition::Publisher;
use mlflow_exporter::metrics::family::Spec;
use mlflow_exporter::metrics::{delivery, probes, specs, workspace, Derivation};
use mlflow_exporter::sync::Mode;
use prometheus::proto::MetricType;
use regex::Regex;

use crate::support::project_dir;

/// Grafana's built-in variables a query may use, and what promtool sees in their place.
const BUILTIN_VARS: &[(&str, &str)] = &[
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "1d"),
];
/// Labels Prometheus gives every scraped series: selectors and groupings of them are fine.
const TARGET_LABELS: &[&str] = &["instance", "job"];
/// Histograms describing a current population rather than events: read as they are, not rate()d.
const STATE_HISTOGRAMS: &[&str] = &["mlflow_user_time_to_first_model_seconds"];
/// The configuration scripts/demo and the end-to-end tests run with: the extra labels it configures
/// (`estimator`) are the ones a board's run-label variable is expected to offer.
pub const CONFIG: &str = "deploy/config.example.yaml";
/// Where the recording rules live (written alongside the boards; the boards use their names).
pub const RULES: &str = "deploy/prometheus/rules";
/// Whether a family's series carry a `workspace` label on a workspace-enabled MLflow 3.
fn per_workspace(name: &str) -> bool {
    workspace::labelled(name)
}

/// A metric family the exporter exposes, or a recording rule: its type and label names (`le` not
/// included).
#[derive(Debug)]
pub struct Family {
    pub kind: &'static str,
    pub labels: BTreeSet<String>,
    /// Scraped as exposed (not aggregated by a rule): the target labels come with it.
    pub scraped: bool,
}

fn kind_of(t: MetricType) -> &'static str {
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        _ => "untyped",
    }
}

fn settings() -> Settings {
    let env = HashMap::from([(
        "MLFLOW_TRACKING_URI".to_string(),
        "http://mlflow:5000".to_string(),
    )]);
    Settings::load(
        Some(&project_dir().join(CONFIG)),
        &env,
        &FlagOverrides::default(),
    )
    .unwrap_or_else(|e| panic!("{CONFIG}: {e}"))
}

/// Every family the exporter can expose: its own metrics and the process collector's, read from a
/// real exposition, plus the families that appear only later, from their specs: snapshot-derived
/// ones (after a sync), the delivery history's (after an event) and the probes' (registered when
/// probes start). Extra labels are those of deploy/config.example.yaml.
fn exporter_catalogue() -> BTreeMap<String, Family> {
    let derivation = Derivation::new(&settings());
    let extra = derivation.extra_label_names();
    let publisher = Publisher::detached(derivation).unwrap();
    // Vectors without a series are not exposed: give each one, so their labels show.
    let m = publisher.telemetry();
    m.sync_succeeded(Mode::Full, 1.0, 1.0, 0);
    m.sync_succeeded(Mode::Incremental, 1.0, 2.0, 0);
    m.api_latency().with_label_values(&["probe"]).observe(0.1);
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
                    scraped: true,
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
    let later: Vec<Spec> = specs()
        .into_iter()
        .chain(delivery::HISTORY_SPECS.iter().copied())
        .chain(probes::SPECS.iter().copied())
        .collect();
    for s in later {
        let family = out.entry(s.name.to_string()).or_insert(Family {
            kind: kind_of(s.kind),
            labels: BTreeSet::new(),
            scraped: true,
        });
        family.labels.extend(s.label_names(&extra));
        if per_workspace(s.name) {
            family.labels.insert("workspace".to_string());
        }
    }
    out
}

/// A recording rule of deploy/prometheus/rules/: its name, expression and static labels.
struct Rule {
    file: String,
    name: String,
    expr: String,
    labels: BTreeSet<String>,
}

fn recording_rules() -> Vec<Rule> {
    let dir = project_dir().join(RULES);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the boards use its recording rules)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(project_dir())
            .unwrap()
            .display()
            .to_string();
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        let groups = doc["groups"].as_sequence().map_or(&[][..], Vec::as_slice);
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().map_or(&[][..], Vec::as_slice))
        {
            let Some(name) = rule["record"].as_str() else {
                continue;
            };
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: rule {name} has no expr"));
            let labels = rule["labels"]
                .as_mapping()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Rule {
                file: file.clone(),
                name: name.to_string(),
                expr: expr.to_string(),
                labels,
            });
        }
    }
    out
}

/// The labels a recording rule's series carry, read off its expression: those it groups `by`
/// (`le` aside); none when it aggregates everything away; else the labels of what it reads, target
/// labels included (minus those it aggregates `without`). Good for the shapes rules take here.
fn rule_family(rule: &Rule, cat: &BTreeMap<String, Family>) -> Family {
    let q = strip_strings(&rule.expr);
    let list = |c: &regex::Captures| -> Vec<String> {
        c[1].split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "le")
            .map(String::from)
            .collect()
    };
    let by = Regex::new(r"\bby\s*\(([^)]*)\)").unwrap();
    let without = Regex::new(r"\bwithout\s*\(([^)]*)\)").unwrap();
    let aggregation = Regex::new(
        r"\b(?:sum|min|max|avg|group|count|stddev|stdvar|topk|bottomk|quantile|count_values)\s*\(",
    )
    .unwrap();
    let mut labels = rule.labels.clone();
    let grouped: Vec<String> = by.captures_iter(&q).flat_map(|c| list(&c)).collect();
    let has_without = without.is_match(&q);
    let scraped = if !grouped.is_empty() {
        labels.extend(grouped);
        false
    } else if aggregation.is_match(&q) && !has_without {
        false
    } else {
        let mut scraped = false;
        let ident = Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
        for m in ident.find_iter(&q) {
            if let Some(r) = resolve(cat, m.as_str()) {
                labels.extend(r.allowed);
                scraped |= r.family.scraped;
            }
        }
        let dropped: Vec<String> = without.captures_iter(&q).flat_map(|c| list(&c)).collect();
        labels.retain(|l| !dropped.contains(l) && l != "le");
        scraped && !TARGET_LABELS.iter().any(|t| dropped.iter().any(|d| d == t))
    };
    labels.retain(|l| !TARGET_LABELS.contains(&l.as_str()));
    Family {
        kind: "recording rule",
        labels,
        scraped,
    }
}

/// The exporter's families and the recording rules, which must not shadow them.
pub fn catalogue() -> BTreeMap<String, Family> {
    let mut cat = exporter_catalogue();
    for rule in recording_rules() {
        assert!(
            rule.name.contains(':') && rule.name.starts_with("mlflow:"),
            "{}: recording rule {} is not named mlflow:level:operations",
            rule.file,
            rule.name
        );
        let family = rule_family(&rule, &cat);
        // A name may be recorded by several rules (one per group); their labels add up.
        let entry = cat.entry(rule.name.clone()).or_insert(Family {
            kind: "recording rule",
            labels: BTreeSet::new(),
            scraped: false,
        });
        entry.labels.extend(family.labels);
        entry.scraped |= family.scraped;
    }
    cat
}

/// How an identifier in a query resolves: the family, and the labels a selector of it may use.
pub struct Ref<'a> {
    pub name: &'a str,
    pub family: &'a Family,
    /// A counter, or a histogram's `_bucket`/`_count`/`_sum`: only meaningful through rate().
    cumulative: bool,
    pub allowed: BTreeSet<String>,
}

fn allowed(family: &Family) -> BTreeSet<String> {
    let mut out = family.labels.clone();
    if family.scraped {
        out.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
    }
    out
}

fn resolve<'a>(cat: &'a BTreeMap<String, Family>, ident: &str) -> Option<Ref<'a>> {
    if let Some((name, family)) = cat.get_key_value(ident) {
        return Some(Ref {
            name,
            family,
            cumulative: family.kind == "counter",
            allowed: allowed(family),
        });
    }
    for suffix in ["_bucket", "_count", "_sum"] {
        let Some(base) = ident.strip_suffix(suffix) else {
            continue;
        };
        if let Some((name, family)) = cat.get_key_value(base) {
            if family.kind == "histogram" {
                let mut allowed = allowed(family);
                if suffix == "_bucket" {
                    allowed.insert("le".to_string());
                }
                return Some(Ref {
                    name,
                    family,
                    cumulative: !STATE_HISTOGRAMS.contains(&name.as_str()),
                    allowed,
                });
            }
        }
    }
    None
}

/// The query with every string literal emptied, so label values and regexes are not read as names.
pub fn strip_strings(expr: &str) -> String {
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

/// A board's template variable, as far as queries are concerned.
pub struct Var {
    /// Several values at once (multi-value or with "All"): matchers must use `=~` or `!~`.
    pub multi: bool,
    /// The value saved as current, when it is one concrete value (not "All").
    pub current: Option<String>,
}

pub struct Lint {
    cat: BTreeMap<String, Family>,
    ident: Regex,
    selector: Regex,
    matcher: Regex,
    equality: Regex,
    grouping: Regex,
    range_fn: Regex,
    range_after: Regex,
    variable: Regex,
}

impl Lint {
    pub fn new() -> Lint {
        Lint::with(catalogue())
    }

    fn with(cat: BTreeMap<String, Family>) -> Lint {
        Lint {
            cat,
            ident: Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap(),
            selector: Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}").unwrap(),
            matcher: Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap(),
            equality: Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:!=|=)\s*"((?:[^"\\]|\\.)*)""#)
                .unwrap(),
            grouping: Regex::new(r"\b(by|without)\s*\(([^)]*)\)").unwrap(),
            range_fn: Regex::new(r"\b(?:rate|irate|increase)\s*\(\s*$").unwrap(),
            range_after: Regex::new(r"^\s*(?:\{[^}]*\})?\s*\[").unwrap(),
            variable: Regex::new(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]").unwrap(),
        }
    }

    /// Metric references (identifiers starting with mlflow_, mlflow: or process_) in a string-free
    /// query, with their byte offsets; an unknown name is reported in `errs`.
    pub fn refs(&self, q: &str, at: &str, errs: &mut Vec<String>) -> Vec<(usize, Ref<'_>)> {
        let mut out = Vec::new();
        for m in self.ident.find_iter(q) {
            let id = m.as_str();
            if !(id.starts_with("mlflow_")
                || id.starts_with("mlflow:")
                || id.starts_with("process_"))
            {
                continue;
            }
            match resolve(&self.cat, id) {
                Some(r) => out.push((m.start(), r)),
                None if id.starts_with("mlflow:") => errs.push(format!(
                    "{at}: unknown recording rule {id} (not recorded in {RULES}/)"
                )),
                None => errs.push(format!("{at}: unknown metric {id}")),
            }
        }
        out
    }

    /// Labels of each selector `name{...}` in a string-free query must be labels of `name`.
    pub fn selectors(&self, q: &str, at: &str, errs: &mut Vec<String>) {
        for c in self.selector.captures_iter(q) {
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
    }

    /// Checks one PromQL query (variables already replaced): metric names, matcher and grouping
    /// labels, counters through rate().
    pub fn expr(&self, expr: &str, at: &str, errs: &mut Vec<String>) {
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
        self.selectors(&q, at, errs);
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
            let labels: Vec<&str> = c[2]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            for label in &labels {
                for (_, r) in &refs {
                    if !r.allowed.contains(*label) {
                        errs.push(format!(
                            "{at}: `{} ({})` on {}, which has no label {label} (labels: {:?})",
                            &c[1], &c[2], r.name, r.allowed
                        ));
                    }
                }
            }
            // Names are unique only inside a workspace: what keeps the name keeps the workspace.
            let kept = ["experiment", "model"]
                .into_iter()
                .find(|l| &c[1] == "by" && labels.contains(l));
            let scoped = refs.iter().find(|(_, r)| r.allowed.contains("workspace"));
            if let (Some(kept), Some((_, r)), false) = (kept, scoped, labels.contains(&"workspace"))
            {
                errs.push(format!(
                    "{at}: `by ({})` on {} keeps the {kept} but not its workspace: two \
                     workspaces' same-named {kept}s would be added together",
                    &c[2], r.name
                ));
            }
        }
        // People counted per workspace: added up over workspaces, they overcount.
        for (_, r) in self.refs(&q, at, &mut Vec::new()) {
            let people = workspace::counts_people(r.name);
            let by_workspace = self
                .grouping
                .captures_iter(&q)
                .any(|c| &c[1] == "by" && c[2].split(',').any(|l| l.trim() == "workspace"));
            if people && !by_workspace {
                errs.push(format!(
                    "{at}: {} is per workspace on a workspace-enabled MLflow: read \
                     mlflow_platform_{} for the platform, or group it by workspace",
                    r.name,
                    r.name.trim_start_matches("mlflow_")
                ));
            }
        }
    }

    /// Template variables a query names. `$1`, `${2}` are `label_replace` captures, which Grafana
    /// leaves to Prometheus (a variable cannot be named by a number alone).
    pub fn var_names<'e>(&self, expr: &'e str) -> Vec<&'e str> {
        self.variable
            .captures_iter(expr)
            .map(|c| c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str())
            .filter(|name| !is_capture(name))
            .collect()
    }

    /// Template variables a query uses must exist on the board (or be Grafana's built-ins).
    pub fn variables(
        &self,
        expr: &str,
        defined: &BTreeMap<String, Var>,
        at: &str,
        errs: &mut Vec<String>,
    ) {
        for name in self.var_names(expr) {
            if !defined.contains_key(name) && !BUILTIN_VARS.iter().any(|(b, _)| *b == name) {
                errs.push(format!("{at}: undefined variable ${name}"));
            }
        }
    }

    /// A variable that can hold several values becomes a regex alternation: `=` would not match.
    pub fn multi_values_by_regex(
        &self,
        expr: &str,
        vars: &BTreeMap<String, Var>,
        at: &str,
        errs: &mut Vec<String>,
    ) {
        for c in self.equality.captures_iter(expr) {
            for name in self.var_names(&c[2]) {
                if vars.get(name).is_some_and(|v| v.multi) {
                    errs.push(format!(
                        "{at}: `{}` compares {} with the multi-value ${name}: use =~ (or !~)",
                        &c[0], &c[1]
                    ));
                }
            }
        }
    }

    /// The query as Prometheus sees it: built-ins replaced by typical values, a variable by its
    /// saved current value, or `.*` when that is "All" (inside a matcher).
    pub fn concrete(&self, expr: &str, vars: &BTreeMap<String, Var>) -> String {
        self.variable
            .replace_all(expr, |c: &regex::Captures| {
                let name = c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str();
                if is_capture(name) {
                    return c[0].to_string();
                }
                BUILTIN_VARS
                    .iter()
                    .find(|(b, _)| *b == name)
                    .map(|(_, v)| v.to_string())
                    .or_else(|| vars.get(name).and_then(|v| v.current.clone()))
                    .unwrap_or_else(|| ".*".to_string())
            })
            .into_owned()
    }
}

/// `1` in `$1`: a capture of a `label_replace` replacement, not a template variable.
fn is_capture(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_digit())
}

pub fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}
