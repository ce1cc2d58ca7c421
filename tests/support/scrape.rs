//! Scrapes read back: a parser of the text exposition, exact assertions on a family, the counters
//! Prometheus needs kept across cycles and restarts, and `promtool check metrics`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// `promtool check metrics` on a scrape: its output (empty when the lint passes) and exit code.
pub fn promtool_check_metrics(scrape: &str) -> (String, Option<i32>) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package prometheus (scripts/test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code(),
    )
}

/// What a publisher serves now, after `promtool check metrics` accepted it.
pub fn scrape(publisher: &mlflow_exporter::exposition::Publisher) -> Scrape {
    let text = String::from_utf8(publisher.current().text().to_vec()).unwrap();
    let (lint, code) = promtool_check_metrics(&text);
    assert_eq!(
        (lint.as_str(), code),
        ("", Some(0)),
        "promtool check metrics"
    );
    Scrape::parse(&text)
}

/// Labels of one series, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// A parsed text exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    /// Sample name → (labels → value).
    pub samples: BTreeMap<String, BTreeMap<Labels, f64>>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, BTreeMap<Labels, f64>> = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(i) => {
                    let (labels, end) = parse_labels(&line[i + 1..]);
                    (&line[..i], labels, &line[i + 1 + end..])
                }
                None => {
                    let i = line.find(' ').expect("sample without value");
                    (&line[..i], Labels::new(), &line[i..])
                }
            };
            let value = rest.split_whitespace().next().expect("value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let prev = samples
                .entry(name.to_string())
                .or_default()
                .insert(labels, value);
            assert!(prev.is_none(), "duplicate series {line:?}");
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of one series; panics naming the series present when it is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want = to_labels(labels);
        self.samples
            .get(name)
            .and_then(|s| s.get(&want))
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no series {name}{want:?}; present: {:?}",
                    self.samples.get(name).map(|s| s.keys().collect::<Vec<_>>())
                )
            })
    }

    /// Every series of one sample name.
    pub fn family(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples.get(name).cloned().unwrap_or_default()
    }

    /// The samples of every counter and histogram (by their `# TYPE` lines): a histogram's
    /// buckets, sum and count each.
    pub fn counter_samples(&self) -> BTreeMap<(String, Labels), f64> {
        let mut names: Vec<String> = Vec::new();
        for line in self.text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("#") && words.next() == Some("TYPE") {
                match (words.next(), words.next()) {
                    (Some(name), Some("counter")) => names.push(name.to_string()),
                    (Some(name), Some("histogram")) => {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.push(format!("{name}{suffix}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        names
            .iter()
            .flat_map(|n| {
                self.family(n)
                    .into_iter()
                    .map(move |(labels, v)| ((n.clone(), labels), v))
            })
            .collect()
    }
}

/// Asserts that no counter or histogram sample of `before` is missing from `after` or lower
/// there, as Prometheus' `increase()` needs; samples whose name `skip` picks are left out.
/// Returns how many samples were compared.
pub fn assert_counters_kept(before: &Scrape, after: &Scrape, skip: impl Fn(&str) -> bool) -> usize {
    let after = after.counter_samples();
    let mut problems = Vec::new();
    let mut compared = 0;
    for ((name, labels), v) in before.counter_samples() {
        if skip(&name) {
            continue;
        }
        compared += 1;
        match after.get(&(name.clone(), labels.clone())) {
            None => problems.push(format!("{name}{labels:?} vanished (was {v})")),
            Some(w) if *w < v => problems.push(format!("{name}{labels:?} went back: {v} -> {w}")),
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {compared}:\n{}",
        problems.len(),
        problems.join("\n")
    );
    compared
}

/// The exporter's own counters of this process (requests made, sync errors): a restart starts
/// them over, as every exporter's, which `increase()` reads as the reset it is.
pub fn process_counter(name: &str) -> bool {
    (name.starts_with("mlflow_exporter_") && !name.starts_with("mlflow_exporter_corrections"))
        || name.starts_with("process_")
}

pub fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `a="x",b="y"}`; returns the labels and the byte index just past the `}`.
fn parse_labels(s: &str) -> (Labels, usize) {
    let mut labels = Labels::new();
    let mut chars = s.char_indices();
    let mut next = || chars.next().expect("unterminated label set");
    loop {
        let mut name = String::new();
        loop {
            match next() {
                (i, '}') => return (labels, i + 1),
                (_, '=') => break,
                (_, ',') => {}
                (_, c) => name.push(c),
            }
        }
        assert_eq!(next().1, '"', "label value must be quoted");
        let mut value = String::new();
        loop {
            match next() {
                (_, '\\') => value.push(match next().1 {
                    'n' => '\n',
                    c => c,
                }),
                (_, '"') => break,
                (_, c) => value.push(c),
            }
        }
        labels.insert(name, value);
    }
}

/// Asserts that a family holds exactly these series, with values equal to within 1e-9 relative
/// (money is a product of floats; everything else is an exact integer or decimal).
pub fn assert_family(scrape: &Scrape, name: &str, expected: &[(&[(&str, &str)], f64)]) {
    let got = scrape.family(name);
    let want: BTreeMap<Labels, f64> = expected.iter().map(|(l, v)| (to_labels(l), *v)).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing series {missing:?}, unexpected series {extra:?}"
    );
    for (labels, w) in &want {
        let g = got[labels];
        let close = if *w == 0.0 {
            g == 0.0
        } else {
            ((g - w) / w).abs() < 1e-9
        };
        assert!(close, "{name}{labels:?} = {g}, want {w}");
    }
}
