//! Histograms as counted: exact per-bucket counts kept by the tally, the delivery history and the
//! probes, and stored between runs; and their counts moved onto new bounds when the buckets are
//! reconfigured. The encoder writes them ([`crate::metrics::family::Family::add_histogram`]);
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

/// Per-bucket counts over `old` bounds (one more count than bounds) moved onto `new` bounds: each
/// old bucket's count goes to the first new bucket whose bound is at least the old one (the
/// overflow bucket to the new overflow bucket). Count and sum stay exact; with other buckets, the
/// new ones are an upper estimate. `None` when the counts do not fit the bounds.
pub fn rebucket<B: PartialOrd + Copy>(old: &[B], counts: &[u64], new: &[B]) -> Option<Vec<u64>> {
    if counts.is_empty() {
        return Some(Vec::new());
    }
    if counts.len() != old.len() + 1 {
        return None;
    }
    if old.len() == new.len() && old.iter().zip(new).all(|(a, b)| a == b) {
        return Some(counts.to_vec());
    }
    let mut out = vec![0; new.len() + 1];
    for (i, c) in counts.iter().enumerate() {
        let j = match old.get(i) {
            Some(bound) => new.partition_point(|b| b < bound),
            None => new.len(),
        };
        out[j] += c;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconfigured_buckets_keep_every_observation() {
        assert_eq!(
            rebucket(&[1, 10], &[2, 1, 1], &[1, 10]),
            Some(vec![2, 1, 1])
        );
        // 1 → 5, 10 → 10, overflow stays overflow.
        assert_eq!(
            rebucket(&[1, 10], &[2, 1, 1], &[5, 10, 20]),
            Some(vec![2, 1, 0, 1])
        );
        assert_eq!(rebucket(&[1, 10], &[2, 1, 1], &[3]), Some(vec![2, 2]));
        assert_eq!(rebucket(&[1, 10], &[2, 1], &[3]), None);
        assert_eq!(rebucket::<u64>(&[], &[], &[3]), Some(vec![]));
    }
}
