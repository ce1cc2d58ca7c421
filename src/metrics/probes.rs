//! Families of the probes: success, latency and status of the latest probes, failures by reason, and
//! the outage history (count, time down, time up) from which availability and MTBF follow.

use super::family::TextFamily;

use super::family::{Family, Spec};
use crate::probes::ProbeBook;
use crate::source::probe::Reason;

pub const SUCCESS: Spec = Spec::gauge(
    "mlflow_probe_success",
    "1 if the latest probe of the endpoint succeeded, else 0",
    &["probe", "model", "alias"],
);
pub const DURATION: Spec = Spec::histogram(
    "mlflow_probe_duration_seconds",
    "Time from sending a probe to the end of the answer (probes that got an answer or timed out)",
    &["probe", "model", "alias"],
);
pub const STATUS: Spec = Spec::gauge(
    "mlflow_probe_http_status_code",
    "HTTP status of the latest probe's answer; 0 when none came",
    &["probe"],
);
pub const FAILURES: Spec = Spec::counter(
    "mlflow_probe_failures_total",
    "Failed probes by reason: timeout, connect, tls, status (unexpected code), body (unexpected content)",
    &["probe", "reason"],
);
pub const OUTAGES: Spec = Spec::counter(
    "mlflow_probe_outages_total",
    "Outages: the endpoint went down after the configured number of consecutive failed probes",
    &["probe"],
);
pub const OUTAGE_SECONDS: Spec = Spec::counter(
    "mlflow_probe_outage_seconds_total",
    "Time the endpoint was down, from the first failed probe of each outage to the next success",
    &["probe"],
);
pub const UPTIME_SECONDS: Spec = Spec::counter(
    "mlflow_probe_uptime_seconds_total",
    "Time the endpoint was seen up by the probes (time the exporter did not run is not counted)",
    &["probe"],
);
pub const CERT_EXPIRY: Spec = Spec::gauge(
    "mlflow_probe_tls_cert_expiry_timestamp_seconds",
    "Unix time at which the certificate the endpoint presents expires",
    &["probe"],
);

pub const SPECS: &[Spec] = &[
    SUCCESS,
    DURATION,
    STATUS,
    FAILURES,
    OUTAGES,
    OUTAGE_SECONDS,
    UPTIME_SECONDS,
    CERT_EXPIRY,
];

/// The probe families as of now. A probe appears in the success, status and duration families once
/// it has run; its counters appear from the start (restored from the store).
pub fn families(book: &ProbeBook) -> Vec<TextFamily> {
    let mut success = Family::live(&SUCCESS);
    let mut duration = Family::live(&DURATION);
    let mut status = Family::live(&STATUS);
    let mut failures = Family::live(&FAILURES);
    let mut outages = Family::live(&OUTAGES);
    let mut outage_s = Family::live(&OUTAGE_SECONDS);
    let mut uptime_s = Family::live(&UPTIME_SECONDS);
    let mut cert = Family::live(&CERT_EXPIRY);
    for r in &book.records {
        let live = r.live();
        let ids = [r.name.as_str(), r.model.as_str(), r.alias.as_str()];
        let name = [r.name.as_str()];
        if let Some((ok, code)) = live.last {
            success.add(&ids, if ok { 1.0 } else { 0.0 });
            status.add(&name, f64::from(code.unwrap_or(0)));
        }
        if !live.durations.counts.is_empty() {
            duration.add_histogram(
                &ids,
                &book.buckets,
                &live.durations.counts,
                live.durations.sum,
            );
        }
        for (reason, n) in Reason::ALL.iter().zip(live.failures) {
            failures.add(&[&r.name, reason.as_str()], n as f64);
        }
        let t = live.availability.totals();
        outages.add(&name, t.outages as f64);
        outage_s.add(&name, t.outage_ms as f64 / 1000.0);
        uptime_s.add(&name, t.uptime_ms as f64 / 1000.0);
        if let Some(at) = live.cert_not_after {
            cert.add(&name, at as f64);
        }
    }
    [
        success, duration, status, failures, outages, outage_s, uptime_s, cert,
    ]
    .into_iter()
    .map(Family::finish)
    .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::probes::availability::Totals;
    use crate::probes::ProbeRecord;
    use crate::source::probe::Outcome;

    fn outcome(at_ms: i64, seconds: f64, status: Option<u16>, failure: Option<Reason>) -> Outcome {
        Outcome {
            at_ms,
            seconds,
            status,
            failure,
            detail: String::new(),
            cert_not_after: status.map(|_| 1_900_000_000),
        }
    }

    /// Series of a family as (labels, value), gauges and counters only.
    fn series(mf: &TextFamily) -> Vec<(Vec<String>, f64)> {
        mf.samples()
            .into_iter()
            .map(|(_, labels, v)| (labels.into_iter().map(|(_, v)| v).collect(), v))
            .collect()
    }

    #[test]
    fn families_follow_the_results_of_each_probe() {
        let buckets = vec![0.1, 1.0];
        let churn = Arc::new(ProbeRecord::new(
            "churn",
            "churn",
            "champion",
            2,
            Totals::default(),
        ));
        // Restored from the store: 100 s up and one 20-s outage before the restart.
        let saved = Totals {
            uptime_ms: 100_000,
            outage_ms: 20_000,
            outages: 1,
            observed_ms: 1_000,
            open_since_ms: None,
        };
        let mlflow = Arc::new(ProbeRecord::new("mlflow", "", "", 1, saved));
        let results = [
            (&churn, outcome(10_000, 0.05, Some(200), None)),
            (
                &churn,
                outcome(11_000, 0.5, Some(500), Some(Reason::Status)),
            ),
            (&churn, outcome(12_000, 1.0, None, Some(Reason::Timeout))),
            (&churn, outcome(13_000, 0.002, None, Some(Reason::Connect))),
            (&churn, outcome(14_000, 0.08, Some(200), None)),
        ];
        for (r, o) in &results {
            r.record(o, &buckets);
        }
        let book = ProbeBook {
            records: vec![churn, mlflow],
            buckets,
        };
        let fams = families(&book);
        let by_name = |n: &str| fams.iter().find(|f| f.name() == n).unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

        // `mlflow` has not run since the restart: no success, status or duration series yet.
        assert_eq!(
            series(by_name("mlflow_probe_success")),
            vec![(s(&["churn", "churn", "champion"]), 1.0)]
        );
        assert_eq!(
            series(by_name("mlflow_probe_http_status_code")),
            vec![(s(&["churn"]), 200.0)]
        );
        // Answers and the timeout: 0.05, 0.5, 1.0, 0.08; the refused connection is not latency.
        let h: Vec<(String, f64)> = by_name("mlflow_probe_duration_seconds")
            .samples()
            .into_iter()
            .map(|(n, labels, v)| (format!("{n} {}", labels.last().unwrap().1), v))
            .collect();
        let h: Vec<(&str, f64)> = h.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            h,
            [
                ("mlflow_probe_duration_seconds_bucket 0.1", 2.0),
                ("mlflow_probe_duration_seconds_bucket 1", 4.0),
                ("mlflow_probe_duration_seconds_bucket +Inf", 4.0),
                (
                    "mlflow_probe_duration_seconds_sum champion",
                    0.05 + 0.5 + 1.0 + 0.08
                ),
                ("mlflow_probe_duration_seconds_count champion", 4.0),
            ]
        );
        let failures = series(by_name("mlflow_probe_failures_total"));
        assert_eq!(failures.len(), 10);
        assert_eq!(
            failures[..5],
            [
                (s(&["churn", "timeout"]), 1.0),
                (s(&["churn", "connect"]), 1.0),
                (s(&["churn", "tls"]), 0.0),
                (s(&["churn", "status"]), 1.0),
                (s(&["churn", "body"]), 0.0),
            ]
        );
        // Threshold 2: failures at 11 s and 12 s open an outage dated 11 s; the success at 14 s
        // closes it after 3 s. Up 10–11 s.
        assert_eq!(
            series(by_name("mlflow_probe_outages_total")),
            vec![(s(&["churn"]), 1.0), (s(&["mlflow"]), 1.0)]
        );
        assert_eq!(
            series(by_name("mlflow_probe_outage_seconds_total")),
            vec![(s(&["churn"]), 3.0), (s(&["mlflow"]), 20.0)]
        );
        assert_eq!(
            series(by_name("mlflow_probe_uptime_seconds_total")),
            vec![(s(&["churn"]), 1.0), (s(&["mlflow"]), 100.0)]
        );
        assert_eq!(
            series(by_name("mlflow_probe_tls_cert_expiry_timestamp_seconds")),
            vec![(s(&["churn"]), 1.9e9)]
        );
        let help = format!("# HELP mlflow_probe_success {}\n", SUCCESS.help);
        assert!(by_name("mlflow_probe_success")
            .text()
            .starts_with(help.as_bytes()));
    }
}
