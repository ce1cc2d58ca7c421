//! Probes run on their own schedules: an endpoint that never answers in time does not delay a fast
//! one, and nothing is skipped; results reach `/metrics` without waiting for a sync.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use mlflow_exporter::config::probes::Probe;
use mlflow_exporter::config::Settings;
use mlflow_exporter::exposition::Publisher;
use mlflow_exporter::metrics::Derivation;
use mlflow_exporter::probes::Probes;
use mlflow_exporter::store::EventStore;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_never_delays_another() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    Mock::given(path("/fast"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.mlflow.tracking_uri = "http://127.0.0.1:1".into();
    settings.probes.mlflow_health = false;
    let mut slow = Probe::get("slow", &format!("{}/slow", server.uri()));
    slow.interval = Some(Duration::from_millis(500));
    slow.timeout = Some(Duration::from_millis(450));
    let mut fast = Probe::get("fast", &format!("{}/fast", server.uri()));
    fast.interval = Some(Duration::from_millis(100));
    fast.timeout = Some(Duration::from_millis(100));
    settings.probes.targets = vec![slow, fast];
    settings.validate().unwrap();

    let store = EventStore::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    let publisher = Arc::new(Publisher::detached(Derivation::new(&settings)).unwrap());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let probes = Probes::start(&settings, store, publisher.telemetry(), shutdown)
        .await
        .unwrap();
    publisher.add_probes(probes.book.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    let _ = stop.send(true);
    probes.stop().await;

    let s = support::scrape::scrape(&publisher);
    let fast = [("probe", "fast"), ("model", ""), ("alias", "")];
    let slow = [("probe", "slow"), ("model", ""), ("alias", "")];
    // Ticks at 0, 100, …, 2 000 ms: 21 probes, each answered, none skipped or late by a tick.
    let fast_runs = s.get("mlflow_probe_duration_seconds_count", &fast);
    assert!(
        (20.0..=21.0).contains(&fast_runs),
        "fast probes: {fast_runs}"
    );
    assert_eq!(
        s.get(
            "mlflow_probe_failures_total",
            &[("probe", "fast"), ("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(s.get("mlflow_exporter_probe_skipped_total", &[]), 0.0);
    // The slow one timed out at each of its ticks (250, 750, 1 250, 1 750 ms: spread by half an
    // interval as the second of two probes) and was not retried in between.
    let slow_timeouts = s.get(
        "mlflow_probe_failures_total",
        &[("probe", "slow"), ("reason", "timeout")],
    );
    assert!(
        (3.0..=4.0).contains(&slow_timeouts),
        "slow timeouts: {slow_timeouts}"
    );
    assert_eq!(
        s.get("mlflow_probe_duration_seconds_count", &slow),
        slow_timeouts
    );
    assert_eq!(s.get("mlflow_probe_success", &slow), 0.0);
    assert_eq!(s.get("mlflow_probe_success", &fast), 1.0);
    assert_eq!(
        s.get("mlflow_probe_outages_total", &[("probe", "slow")]),
        1.0
    );
    assert_eq!(
        s.get("mlflow_probe_outages_total", &[("probe", "fast")]),
        0.0
    );
}
