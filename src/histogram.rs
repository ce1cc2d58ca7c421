//! Histograms as counted: exact per-bucket counts kept by the tally, the delivery history and the
//! probes, and stored between runs. The encoder writes them ([`crate::metrics::family::Family::add_histogram`]);
//! nothing here knows the exposition format.

/// Per-bucket counts for exact histograms: observations in integer units (ms), bounds in seconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq)]
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
