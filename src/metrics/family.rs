//! Building blocks for metric families: a [`Spec`] names and describes a family once, and a
//! [`Family`] collects its series. Values are exact: sums are kept as integers until the end.

use prometheus::proto::MetricType;

/// Name, help, type and labels of a family: its public interface.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    /// Whether the configured extra labels follow `labels`.
    pub extra: bool,
}

impl Spec {
    const fn new(
        kind: MetricType,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Spec {
        Spec {
            name,
            help,
            kind,
            labels,
            extra: false,
        }
    }
    pub const fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Spec {
        Spec::new(MetricType::GAUGE, name, help, labels)
    }
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Spec {
        Spec::new(MetricType::COUNTER, name, help, labels)
    }
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Spec {
        Spec::new(MetricType::HISTOGRAM, name, help, labels)
    }
    /// The family also carries the configured extra labels.
    pub const fn with_extra_labels(mut self) -> Spec {
        self.extra = true;
        self
    }

    /// All label names, the extra ones included when the family takes them.
    pub fn label_names(&self, extra: &[String]) -> Vec<String> {
        let mut v: Vec<String> = self.labels.iter().map(|s| s.to_string()).collect();
        if self.extra {
            v.extend(extra.iter().cloned());
        }
        v
    }
}

/// Appended to the help of everything derived from a snapshot.
pub const AS_OF_SYNC: &str = " (as of the last sync with MLflow)";

/// One family under construction, written straight as its text exposition (Prometheus text
/// format 0.0.4): no per-series structs to build, encode and free, which at 100 000 series was
/// half of publishing and most of its peak memory.
pub struct Family {
    name: &'static str,
    kind: MetricType,
    labels: Vec<String>,
    text: Vec<u8>,
    series: usize,
    /// Sample lines written: what Prometheus counts as series (a histogram's buckets, sum and
    /// count each), and what the series budget counts.
    lines: usize,
    /// Buffer for the label pairs of the series being written, kept between series.
    pairs: Vec<u8>,
}

impl Family {
    pub fn new(spec: &Spec) -> Family {
        Family::with_extra(spec, &[])
    }

    /// A family whose spec takes the configured extra labels, named `extra`.
    pub fn with_extra(spec: &Spec, extra: &[String]) -> Family {
        Family::start(spec, &format!("{}{}", spec.help, AS_OF_SYNC), extra)
    }

    /// A family of a workspace-enabled MLflow whose series are per workspace: a `workspace` label
    /// comes first.
    pub fn per_workspace(spec: &Spec) -> Family {
        let mut f = Family::new(spec);
        f.labels.insert(0, "workspace".to_string());
        f
    }

    /// A family measured live rather than read from MLflow (probes): its help has no sync note.
    pub fn live(spec: &Spec) -> Family {
        Family::start(spec, spec.help, &[])
    }

    fn start(spec: &Spec, help: &str, extra: &[String]) -> Family {
        let mut text = Vec::with_capacity(256);
        let kind = match spec.kind {
            MetricType::COUNTER => "counter",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            _ => "gauge",
        };
        text.extend_from_slice(b"# HELP ");
        text.extend_from_slice(spec.name.as_bytes());
        text.push(b' ');
        escape_into(&mut text, help, false);
        text.extend_from_slice(b"\n# TYPE ");
        text.extend_from_slice(spec.name.as_bytes());
        text.push(b' ');
        text.extend_from_slice(kind.as_bytes());
        text.push(b'\n');
        Family {
            name: spec.name,
            kind: spec.kind,
            labels: spec.label_names(extra),
            text,
            series: 0,
            lines: 0,
            pairs: Vec::new(),
        }
    }

    /// Writes `l1="v1",l2="v2"` of a series into `pairs` (cleared first).
    pub fn pairs_into(&self, values: &[&str], pairs: &mut Vec<u8>) {
        debug_assert_eq!(values.len(), self.labels.len());
        pairs.clear();
        for (i, (n, v)) in self.labels.iter().zip(values).enumerate() {
            if i > 0 {
                pairs.push(b',');
            }
            pairs.extend_from_slice(n.as_bytes());
            pairs.extend_from_slice(b"=\"");
            escape_into(pairs, v, true);
            pairs.push(b'"');
        }
    }

    /// One sample line: `name[suffix]{pairs[,le="bound"]} value`.
    fn line(&mut self, pairs: &[u8], suffix: &str, le: Option<f64>, value: f64) {
        let t = &mut self.text;
        t.extend_from_slice(self.name.as_bytes());
        t.extend_from_slice(suffix.as_bytes());
        if !pairs.is_empty() || le.is_some() {
            t.push(b'{');
            t.extend_from_slice(pairs);
            if let Some(bound) = le {
                if !pairs.is_empty() {
                    t.push(b',');
                }
                t.extend_from_slice(b"le=\"");
                write_value(t, bound);
                t.push(b'"');
            }
            t.push(b'}');
        }
        t.push(b' ');
        write_value(t, value);
        t.push(b'\n');
        self.lines += 1;
    }

    /// The pairs of `values` in this family's own buffer, taken out while lines are written.
    fn own_pairs(&mut self, values: &[&str]) -> Vec<u8> {
        let mut pairs = std::mem::take(&mut self.pairs);
        self.pairs_into(values, &mut pairs);
        pairs
    }

    /// Adds a gauge or counter series.
    pub fn add(&mut self, values: &[&str], value: f64) {
        let pairs = self.own_pairs(values);
        self.add_pairs(&pairs, value);
        self.pairs = pairs;
    }

    /// Adds a gauge or counter series whose label pairs were written by [`Family::pairs_into`] of a
    /// family with the same label names (the four cost families share one key: its pairs written
    /// once instead of four times).
    pub fn add_pairs(&mut self, pairs: &[u8], value: f64) {
        self.line(pairs, "", None, value);
        self.series += 1;
    }

    /// Adds a histogram series from per-bucket (not cumulative) counts; `counts` has one more slot
    /// than `bounds`, for observations above the last bound, or none at all: an accumulator that
    /// observed nothing yet, written with every bucket at 0 so the series exists from the start.
    pub fn add_histogram(&mut self, values: &[&str], bounds: &[f64], counts: &[u64], sum: f64) {
        let pairs = self.own_pairs(values);
        let mut cumulative = 0;
        let counts_or_zeros = counts.iter().chain(std::iter::repeat(&0));
        for (b, c) in bounds.iter().zip(counts_or_zeros) {
            cumulative += c;
            self.line(&pairs, "_bucket", Some(*b), cumulative as f64);
        }
        let count: u64 = counts.iter().sum();
        if bounds.last().is_none_or(|b| *b != f64::INFINITY) {
            self.line(&pairs, "_bucket", Some(f64::INFINITY), count as f64);
        }
        self.line(&pairs, "_sum", None, sum);
        self.line(&pairs, "_count", None, count as f64);
        self.pairs = pairs;
        self.series += 1;
    }

    pub fn finish(self) -> TextFamily {
        TextFamily {
            name: self.name,
            kind: self.kind,
            text: self.text,
            series: self.series,
            lines: self.lines,
        }
    }
}

/// A sample read back from a family's text, in tests: name with suffix, label pairs, value.
#[cfg(test)]
pub type Sample = (String, Vec<(String, String)>, f64);

/// A finished family: its `# HELP` and `# TYPE` lines and its samples, as served.
#[derive(Debug, Clone)]
pub struct TextFamily {
    name: &'static str,
    kind: MetricType,
    text: Vec<u8>,
    series: usize,
    lines: usize,
}

impl TextFamily {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn kind(&self) -> MetricType {
        self.kind
    }

    /// Series (a histogram's buckets, sum and count are one).
    pub fn series(&self) -> usize {
        self.series
    }

    /// Sample lines: the series as Prometheus counts them (each bucket, sum and count one).
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// The same family with its text rewritten (the same samples, relabelled).
    pub fn with_text(self, text: Vec<u8>) -> TextFamily {
        TextFamily { text, ..self }
    }

    /// A copy of the family with another text (the same samples, relabelled): its own text is
    /// not copied first.
    pub fn clone_with_text(&self, text: Vec<u8>) -> TextFamily {
        TextFamily {
            name: self.name,
            kind: self.kind,
            text,
            series: self.series,
            lines: self.lines,
        }
    }

    /// The exposition text, header lines included.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The family's samples read back from its text: (name with suffix, label pairs, value).
    #[cfg(test)]
    pub fn samples(&self) -> Vec<Sample> {
        let text = std::str::from_utf8(&self.text).expect("the exposition is UTF-8");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().expect("a sample's value is a number"),
                };
                let Some((name, rest)) = head.split_once('{') else {
                    return (head.to_string(), Vec::new(), value);
                };
                let mut pairs = Vec::new();
                let mut chars = rest.strip_suffix('}').expect("labels end with }").chars();
                loop {
                    let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if label.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'));
                    let mut v = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c) => v.push(c),
                                None => panic!("a label value ends in an escape"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    pairs.push((label, v));
                    if chars.next().is_none() {
                        break;
                    }
                }
                (name.to_string(), pairs, value)
            })
            .collect()
    }
}

/// Escapes `\\` and newlines (and `"` in label values) as the text format requires.
fn escape_into(out: &mut Vec<u8>, v: &str, quote: bool) {
    let special = |b: &u8| *b == b'\\' || *b == b'\n' || (quote && *b == b'"');
    if !v.as_bytes().iter().any(special) {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    for b in v.bytes() {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b if special(&b) => out.extend_from_slice(&[b'\\', b]),
            b => out.push(b),
        }
    }
}

/// A sample value as Prometheus reads it: shortest round-trip decimal, `+Inf`, `-Inf`, `NaN`.
/// Integers as integers (`3`, as `{}` writes them); other values through ryu, several times faster
/// than `{}` for the same digits (exponent notation only below 1e-5 or from 1e16, which Prometheus
/// reads alike).
fn write_value(out: &mut Vec<u8>, v: f64) {
    const EXACT: f64 = (1u64 << 53) as f64;
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.fract() == 0.0 && v.abs() < EXACT && !(v == 0.0 && v.is_sign_negative()) {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{bounds_ms, HistogramAcc};

    #[test]
    fn histogram_buckets_are_cumulative_and_le() {
        let bounds = [1.0, 10.0];
        let ms = bounds_ms(&bounds);
        let mut acc = HistogramAcc::default();
        for v in [500, 1000, 1001, 20_000] {
            acc.observe_ms(&ms, v);
        }
        assert_eq!(acc.counts, vec![2, 1, 1]);
        let mut f = Family::new(&Spec::histogram("x_seconds", "x", &["a"]));
        f.add_histogram(&["v"], &bounds, &acc.counts, acc.sum_ms as f64 / 1000.0);
        let f = f.finish();
        assert_eq!(f.series(), 1);
        assert_eq!(
            std::str::from_utf8(f.text()).unwrap(),
            "# HELP x_seconds x (as of the last sync with MLflow)\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{a=\"v\",le=\"1\"} 2\n\
             x_seconds_bucket{a=\"v\",le=\"10\"} 3\n\
             x_seconds_bucket{a=\"v\",le=\"+Inf\"} 4\n\
             x_seconds_sum{a=\"v\"} 22.501\n\
             x_seconds_count{a=\"v\"} 4\n"
        );
    }

    /// An accumulator that observed nothing has no counts: its series is written with every
    /// bucket at 0, as the callers' own zero vectors wrote it before.
    #[test]
    fn a_histogram_without_observations_has_every_bucket_at_zero() {
        let mut f = Family::new(&Spec::histogram("x_seconds", "x", &["a"]));
        f.add_histogram(&["v"], &[1.0, 10.0], &[], 0.0);
        assert_eq!(
            std::str::from_utf8(f.finish().text()).unwrap(),
            "# HELP x_seconds x (as of the last sync with MLflow)\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{a=\"v\",le=\"1\"} 0\n\
             x_seconds_bucket{a=\"v\",le=\"10\"} 0\n\
             x_seconds_bucket{a=\"v\",le=\"+Inf\"} 0\n\
             x_seconds_sum{a=\"v\"} 0\n\
             x_seconds_count{a=\"v\"} 0\n"
        );
    }

    /// The text is what the `prometheus` crate's encoder writes for the same series, escapes
    /// included, so scrapers and tests see no change.
    #[test]
    fn the_text_is_what_the_prometheus_encoder_writes() {
        use prometheus::{Encoder, TextEncoder};
        let opts = prometheus::Opts::new("y_total", "help with \\ and\nnewline");
        let counter = prometheus::CounterVec::new(opts, &["a", "b"]).unwrap();
        counter
            .with_label_values(&["q\"uote", "back\\slash\nline"])
            .inc_by(1.5);
        counter.with_label_values(&["", "x"]).inc_by(3.0);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(counter)).unwrap();
        let mut expected = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut expected)
            .unwrap();

        let mut f = Family::live(&Spec::counter(
            "y_total",
            "help with \\ and\nnewline",
            &["a", "b"],
        ));
        f.add(&["", "x"], 3.0);
        f.add(&["q\"uote", "back\\slash\nline"], 1.5);
        let f = f.finish();
        assert_eq!(
            std::str::from_utf8(f.text()).unwrap(),
            std::str::from_utf8(&expected).unwrap()
        );
        assert_eq!(
            f.samples()[1].1,
            [
                ("a".to_string(), "q\"uote".to_string()),
                ("b".to_string(), "back\\slash\nline".to_string())
            ]
        );

        let mut g = Family::live(&Spec::gauge("z", "no labels", &[]));
        for v in [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            0.25,
            -3.0,
            0.0,
            -0.0,
            1e15,
            0.1 + 0.2,
        ] {
            g.add(&[], v);
        }
        assert_eq!(
            std::str::from_utf8(g.finish().text()).unwrap(),
            "# HELP z no labels\n# TYPE z gauge\n\
             z +Inf\nz -Inf\nz NaN\nz 0.25\nz -3\nz 0\nz -0.0\nz 1000000000000000\nz 0.30000000000000004\n"
        );
        // Pairs written once serve every family with the same label names.
        let mut a = Family::live(&Spec::counter("a_total", "a", &["x"]));
        let mut b = Family::live(&Spec::counter("b_total", "b", &["x"]));
        let mut pairs = Vec::new();
        a.pairs_into(&["q\"v"], &mut pairs);
        a.add_pairs(&pairs, 1.0);
        b.add_pairs(&pairs, 2.5);
        assert!(a.finish().text().ends_with(b"\na_total{x=\"q\\\"v\"} 1\n"));
        assert!(b
            .finish()
            .text()
            .ends_with(b"\nb_total{x=\"q\\\"v\"} 2.5\n"));
    }
}
