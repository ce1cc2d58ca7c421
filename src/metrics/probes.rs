//! Families of the probes: success, latency and status of the latest probes, failures by reason, and
//! the outage history (count, time down, time up) from which availability and MTBF follow.

use prometheus::proto::MetricFamily;

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
pub fn families(book: &ProbeBook) -> Vec<MetricFamily> {
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
