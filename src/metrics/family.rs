//! Building blocks for metric families: a [`Spec`] names and describes a family once, and a
//! [`Family`] collects its series. Values are exact: sums are kept as integers until the end.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

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

/// One family under construction.
pub struct Family {
    mf: MetricFamily,
    labels: Vec<String>,
}

impl Family {
    pub fn new(spec: &Spec) -> Family {
        Family::with_extra(spec, &[])
    }

    /// A family whose spec takes the configured extra labels, named `extra`.
    pub fn with_extra(spec: &Spec, extra: &[String]) -> Family {
        let labels = spec.label_names(extra);
        let mut mf = MetricFamily::default();
        mf.set_name(spec.name.to_string());
        mf.set_help(format!("{}{}", spec.help, AS_OF_SYNC));
        mf.set_field_type(spec.kind);
        Family { mf, labels }
    }

    /// A family measured live rather than read from MLflow (probes): its help has no sync note.
    pub fn live(spec: &Spec) -> Family {
        let mut f = Family::new(spec);
        f.mf.set_help(spec.help.to_string());
        f
    }

    fn metric(&self, values: &[&str]) -> Metric {
        debug_assert_eq!(values.len(), self.labels.len());
        let mut m = Metric::default();
        m.set_label(
            self.labels
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    let mut lp = LabelPair::default();
                    lp.set_name(n.clone());
                    lp.set_value(v.to_string());
                    lp
                })
                .collect(),
        );
        m
    }

    /// Adds a gauge or counter series.
    pub fn add(&mut self, values: &[&str], value: f64) {
        let mut m = self.metric(values);
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    /// Adds a histogram series from per-bucket (not cumulative) counts; `counts` has one more slot
    /// than `bounds`, for observations above the last bound.
    pub fn add_histogram(&mut self, values: &[&str], bounds: &[f64], counts: &[u64], sum: f64) {
        let mut m = self.metric(values);
        let mut h = Histogram::default();
        let mut cumulative = 0;
        h.set_bucket(
            bounds
                .iter()
                .zip(counts)
                .map(|(b, c)| {
                    cumulative += c;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*b);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect(),
        );
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum);
        m.set_histogram(h);
        self.mf.mut_metric().push(m);
    }

    pub fn finish(self) -> MetricFamily {
        self.mf
    }
}

/// Per-bucket counts for exact histograms: observations in integer units (ms), bounds in seconds.
#[derive(Debug, Clone, Default)]
pub struct HistogramAcc {
    pub counts: Vec<u64>,
    pub sum_ms: u64,
}

impl HistogramAcc {
    pub fn observe_ms(&mut self, bounds_ms: &[u64], ms: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds_ms.len() + 1];
        }
        let i = bounds_ms.partition_point(|b| *b < ms);
        self.counts[i] += 1;
        self.sum_ms += ms;
    }

    pub fn merge(&mut self, other: &HistogramAcc) {
        if self.counts.is_empty() {
            self.counts = vec![0; other.counts.len()];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
    }
}

/// Per-bucket counts of float observations (ratios), for histograms without an integer unit.
#[derive(Debug, Clone, Default)]
pub struct FloatHistogramAcc {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl FloatHistogramAcc {
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        self.counts[bounds.partition_point(|b| *b < v)] += 1;
        self.sum += v;
    }

    pub fn merge(&mut self, other: &FloatHistogramAcc) {
        if self.counts.is_empty() {
            self.counts = vec![0; other.counts.len()];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

/// Bucket bounds in ms; an observation equal to a bound falls in that bucket (`le`).
pub fn bounds_ms(bounds: &[f64]) -> Vec<u64> {
    bounds
        .iter()
        .map(|b| (b * 1000.0).round().max(0.0) as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mf = f.finish();
        let h = mf.get_metric()[0].get_histogram();
        let cum: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cum, vec![2, 3]);
        assert_eq!(h.get_sample_count(), 4);
        assert_eq!(h.get_sample_sum(), 22.501);
        assert_eq!(mf.help(), "x (as of the last sync with MLflow)");
    }
}
