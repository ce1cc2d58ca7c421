//! Wires the parts together: the sync loop (MLflow → snapshot → published metrics) and the HTTP
//! server, both stopped by one shutdown signal. Takes an already bound listener, so tests bind port 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Settings;
use crate::error::MlflowError;
use crate::metrics::publish::Publisher;
use crate::metrics::Derivation;
use crate::server::{self, AppState};
use crate::source::mlflow::MlflowClient;
use crate::sync::Syncer;

/// Sender side of the shutdown signal: send `true` to stop.
pub type Shutdown = watch::Sender<bool>;

/// Runs the exporter until `shutdown` fires.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), crate::Error> {
    let publisher = Arc::new(Publisher::new(Derivation::new(&settings))?);
    let client = MlflowClient::new(
        &settings.mlflow,
        Some(publisher.exporter.api_latency.clone()),
    )?;
    let syncer = Syncer::new(client, &settings);
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        encoded: publisher.handle(),
        ready: ready.clone(),
        telemetry_path: settings.web.telemetry_path.clone(),
    };
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tracking_uri = %settings.mlflow.tracking_uri,
        "mlflow-exporter listening"
    );
    let sync = tokio::spawn(sync_loop(
        syncer,
        publisher,
        ready,
        settings.mlflow.sync_interval,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    server::serve(listener, state, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await?;
    let _ = sync.await;
    tracing::info!("mlflow-exporter stopped");
    Ok(())
}

/// One cycle every `interval`; a cycle still running at shutdown is dropped (nothing it read is kept).
pub async fn sync_loop(
    mut syncer: Syncer,
    publisher: Arc<Publisher>,
    ready: Arc<AtomicBool>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let result = tokio::select! {
            r = syncer.cycle(now_ms) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        after_cycle(&syncer, &publisher, &ready, now_ms, result);
    }
}

/// Publishes a successful cycle, or records a failed one while the last good snapshot stays served.
pub fn after_cycle(
    syncer: &Syncer,
    publisher: &Publisher,
    ready: &AtomicBool,
    now_ms: i64,
    result: Result<crate::sync::CycleReport, MlflowError>,
) {
    match result {
        Ok(report) => {
            let ended = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            publisher.exporter.sync_succeeded(
                report.mode,
                report.seconds,
                ended,
                syncer.snapshot().runs.len(),
            );
            // Deriving a large snapshot is CPU work: tell a multi-threaded runtime to move the
            // scrapes this thread would serve elsewhere (a current-thread runtime has nowhere to go).
            let publish = || publisher.publish(syncer.snapshot(), now_ms);
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(publish)
                }
                _ => publish(),
            }
            ready.store(true, Ordering::Release);
            tracing::info!(
                mode = report.mode.as_str(),
                requests = report.requests,
                runs_read = report.runs_read,
                runs = syncer.snapshot().runs.len(),
                seconds = report.seconds,
                "sync with MLflow done"
            );
        }
        Err(e) => {
            publisher.exporter.sync_failed(&e);
            publisher.refresh();
            tracing::warn!(reason = e.reason(), error = %e, "sync with MLflow failed; serving the last good snapshot");
        }
    }
}
