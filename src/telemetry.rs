//! The exporter's own health (`mlflow_up`, `mlflow_exporter_*`): whether the last sync worked, when
//! and how long syncs take, why they fail, the latency of its calls to MLflow, events, probes and
//! stores. The one handle services hold: each method is named for what happened, writes the log
//! line of a failure with its counter (so a counted failure is always logged, and the other way
//! round), and says the exposition changed, so no service reaches into the encoder.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::delivery::Source;
use crate::error::MlflowError;
use crate::store::StoreError;
use crate::sync::Mode;

/// Revision baked in by build.rs (`git rev-parse`), or `unknown`.
pub const REVISION: &str = env!("MLFLOW_EXPORTER_BUILD_REVISION");
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The exporter's own metrics, their registry, and whether they changed since the last encode.
pub struct Telemetry {
    registry: Registry,
    up: IntGauge,
    last_sync: Gauge,
    sync_duration: GaugeVec,
    sync_errors: IntCounterVec,
    trace_read_errors: IntCounterVec,
    api_latency: HistogramVec,
    snapshot_runs: IntGauge,
    events: IntCounterVec,
    probe_delay: Histogram,
    probe_skipped: IntCounter,
    probe_store_errors: IntCounter,
    counter_store_errors: IntCounter,
    web_config_last_reload_successful: IntGauge,
    web_config_last_reload_success: Gauge,
    /// Set by every change, taken by the next encode: events and probe results can arrive far
    /// faster than anyone scrapes.
    changed: AtomicBool,
}

impl Telemetry {
    /// Registers every family (at 0 where a board or rule uses it) and the process collector.
    pub fn new() -> prometheus::Result<Telemetry> {
        let registry = Registry::new();
        let r = &registry;
        let up = IntGauge::new(
            "mlflow_up",
            "1 if the last sync cycle with MLflow succeeded, else 0",
        )?;
        let build = IntGaugeVec::new(
            Opts::new(
                "mlflow_exporter_build_info",
                "Version and revision of the exporter; value 1",
            ),
            &["version", "revision"],
        )?;
        build.with_label_values(&[VERSION, REVISION]).set(1);
        let last_sync = Gauge::new(
            "mlflow_exporter_last_sync_timestamp_seconds",
            "Unix time at which the last successful sync ended",
        )?;
        let sync_duration = GaugeVec::new(
            Opts::new(
                "mlflow_exporter_sync_duration_seconds",
                "Duration of the last successful sync of each mode",
            ),
            &["mode"],
        )?;
        let sync_errors = IntCounterVec::new(
            Opts::new(
                "mlflow_exporter_sync_errors_total",
                "Sync cycles that failed, by reason; with a workspace, that workspace's part of the cycle (the cycle as a whole when empty)",
            ),
            &["reason", "workspace"],
        )?;
        for reason in MlflowError::REASONS {
            sync_errors.with_label_values(&[reason, ""]).inc_by(0);
        }
        let api_latency = HistogramVec::new(
            HistogramOpts::new(
                "mlflow_exporter_api_request_duration_seconds",
                "Latency of each HTTP request the exporter makes to MLflow's API (every attempt), by endpoint",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["endpoint"],
        )?;
        let snapshot_runs = IntGauge::new(
            "mlflow_exporter_snapshot_runs",
            "Runs held in the exporter's snapshot of MLflow",
        )?;
        r.register(Box::new(up.clone()))?;
        r.register(Box::new(build))?;
        r.register(Box::new(last_sync.clone()))?;
        r.register(Box::new(sync_duration.clone()))?;
        r.register(Box::new(sync_errors.clone()))?;
        let trace_read_errors = IntCounterVec::new(
            Opts::new(
                "mlflow_exporter_trace_read_errors_total",
                "Reads of MLflow 3's traces that failed, by reason and workspace (empty without workspaces); the next cycle reads them again from where the last good one ended",
            ),
            &["reason", "workspace"],
        )?;
        for reason in MlflowError::REASONS {
            trace_read_errors.with_label_values(&[reason, ""]).inc_by(0);
        }
        r.register(Box::new(trace_read_errors.clone()))?;
        r.register(Box::new(api_latency.clone()))?;
        let events = IntCounterVec::new(
            Opts::new(
                "mlflow_exporter_events_total",
                "Delivery events by source and outcome (recorded, duplicate of a stored change, rejected request, store error)",
            ),
            &["source", "outcome"],
        )?;
        for source in Source::ALL {
            for outcome in ["recorded", "duplicate", "rejected", "error"] {
                events
                    .with_label_values(&[source.as_str(), outcome])
                    .inc_by(0);
            }
        }
        r.register(Box::new(snapshot_runs.clone()))?;
        r.register(Box::new(events.clone()))?;
        let probe_delay = Histogram::with_opts(
            HistogramOpts::new(
                "mlflow_exporter_probe_delay_seconds",
                "How late each probe started after its scheduled time (the scheduler's health)",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let probe_skipped = IntCounter::new(
            "mlflow_exporter_probe_skipped_total",
            "Scheduled probes skipped because the exporter could not start them in time",
        )?;
        let probe_store_errors = IntCounter::new(
            "mlflow_exporter_probe_store_errors_total",
            "Writes of probe outages or totals to the event store that failed (retried at the next checkpoint)",
        )?;
        r.register(Box::new(probe_delay.clone()))?;
        r.register(Box::new(probe_skipped.clone()))?;
        r.register(Box::new(probe_store_errors.clone()))?;
        let counter_store_errors = IntCounter::new(
            "mlflow_exporter_counts_store_errors_total",
            "Saves of what the counters counted to the event store that failed (kept in memory and retried at the next cycle)",
        )?;
        r.register(Box::new(counter_store_errors.clone()))?;
        let web_config_last_reload_successful = IntGauge::new(
            "mlflow_exporter_web_config_last_reload_successful",
            "1 if the last read of --web.config.file succeeded (or none is set), 0 if the last good one is still in force",
        )?;
        let web_config_last_reload_success = Gauge::new(
            "mlflow_exporter_web_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful read of --web.config.file",
        )?;
        r.register(Box::new(web_config_last_reload_successful.clone()))?;
        r.register(Box::new(web_config_last_reload_success.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Telemetry {
            registry,
            up,
            last_sync,
            sync_duration,
            sync_errors,
            trace_read_errors,
            api_latency,
            snapshot_runs,
            events,
            probe_delay,
            probe_skipped,
            probe_store_errors,
            counter_store_errors,
            web_config_last_reload_successful,
            web_config_last_reload_success,
            changed: AtomicBool::new(false),
        })
    }

    /// Every family as of now, for the encoder.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// Whether something changed since the last [`Telemetry::take_changed`].
    pub fn pending(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// Clears the change flag, as an encode begins.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Asks for a re-encode by the next scrape.
    pub fn changed(&self) {
        self.changed.store(true, Ordering::Release);
    }

    /// The latency histogram of MLflow's API, observed by the client at every attempt.
    pub fn api_latency(&self) -> HistogramVec {
        self.api_latency.clone()
    }

    pub fn sync_succeeded(&self, mode: Mode, seconds: f64, ended_at_s: f64, runs: usize) {
        self.up.set(1);
        self.last_sync.set(ended_at_s);
        self.sync_duration
            .with_label_values(&[mode.as_str()])
            .set(seconds);
        self.snapshot_runs.set(runs as i64);
    }

    pub fn sync_failed(&self, err: &MlflowError) {
        tracing::warn!(reason = err.reason(), error = %err, "sync with MLflow failed; serving the last good snapshot");
        self.up.set(0);
        self.sync_errors
            .with_label_values(&[err.reason(), ""])
            .inc();
    }

    /// A workspace's part of a cycle failed; the others went on, so `mlflow_up` stays as it is.
    pub fn workspace_sync_failed(&self, workspace: &str, err: &MlflowError) {
        tracing::warn!(workspace, reason = err.reason(), error = %err, "sync of a workspace failed; it keeps its last good figures, the others go on");
        self.sync_errors
            .with_label_values(&[err.reason(), workspace])
            .inc();
    }

    /// A read of a scope's traces failed (`workspace` empty without workspaces).
    pub fn trace_read_failed(&self, workspace: &str, err: &MlflowError) {
        tracing::warn!(workspace, reason = err.reason(), error = %err, "reading MLflow's traces failed; the next cycle reads them again from the same point");
        self.trace_read_errors
            .with_label_values(&[err.reason(), workspace])
            .inc();
    }

    /// Every reason of `workspace`'s errors at 0, so that its first failure is an increase.
    pub fn workspace_seen(&self, workspace: &str) {
        for reason in MlflowError::REASONS {
            self.trace_read_errors
                .with_label_values(&[reason, workspace])
                .inc_by(0);
            self.sync_errors
                .with_label_values(&[reason, workspace])
                .inc_by(0);
        }
    }

    /// Delivery events from `source` were committed: `recorded` new, `duplicates` already stored.
    pub fn events_recorded(&self, source: Source, recorded: usize, duplicates: usize) {
        self.event(source, "recorded", recorded);
        self.event(source, "duplicate", duplicates);
    }

    /// `n` delivery events from `source` could not be stored.
    pub fn events_not_stored(&self, source: Source, n: usize, err: &StoreError) {
        tracing::error!(source = source.as_str(), error = %err, events = n, "cannot store delivery events");
        self.event(source, "error", n);
    }

    /// A webhook request from `source` was refused (bad token, body or rate).
    pub fn event_rejected(&self, source: Source) {
        self.event(source, "rejected", 1);
    }

    /// A webhook delivery from `source` was one already taken (a replay).
    pub fn event_duplicate(&self, source: Source) {
        self.event(source, "duplicate", 1);
    }

    fn event(&self, source: Source, outcome: &str, n: usize) {
        self.events
            .with_label_values(&[source.as_str(), outcome])
            .inc_by(n as u64);
        self.changed();
    }

    /// A probe started `delay_s` after its time, `skipped` ticks after the last one it ran.
    pub fn probe_started(&self, delay_s: f64, skipped: u64) {
        if skipped > 0 {
            self.probe_skipped.inc_by(skipped);
        }
        self.probe_delay.observe(delay_s);
    }

    /// A probe's result was folded in: its families changed.
    pub fn probe_recorded(&self) {
        self.changed();
    }

    /// The probes' totals could not be saved at a checkpoint.
    pub fn probe_totals_not_saved(&self, err: &StoreError) {
        tracing::warn!(error = %err, "cannot save the probes' totals; will retry at the next checkpoint");
        self.probe_store_errors.inc();
        self.changed();
    }

    /// A probe's outage opening or closing could not be stored.
    pub fn outage_not_stored(&self, probe: &str, err: &StoreError) {
        tracing::error!(probe, error = %err, "cannot store the outage change; the totals are saved at the next checkpoint");
        self.probe_store_errors.inc();
        self.changed();
    }

    /// What the counters counted could not be saved.
    pub fn counter_store_failed(&self, err: &StoreError) {
        tracing::error!(error = %err, "cannot save the counters to the event store; kept in memory, retried at the next cycle");
        self.counter_store_errors.inc();
        self.changed();
    }

    /// `--web.config.file` was read: `ok` if it is the config now in force.
    pub fn web_config_read(&self, ok: bool) {
        self.web_config_last_reload_successful.set(ok as i64);
        if ok {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.web_config_last_reload_success.set(now);
        }
        self.changed();
    }
}
