//! Turns a snapshot into the bytes `/metrics` serves: a custom [`Collector`] holds the families derived
//! from the latest snapshot, the registry adds the exporter's own metrics, and the result is encoded
//! (plain and gzip) once per sync and swapped in atomically, so a scrape never waits on a sync.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

use super::exporter::ExporterMetrics;
use super::family::Spec;
use super::{derive, specs, Derivation};
use crate::delivery::Delivery;
use crate::sync::Snapshot;

/// One encoded exposition, as served.
#[derive(Debug, Default)]
pub struct Encoded {
    pub text: axum::body::Bytes,
    pub gzip: axum::body::Bytes,
}

/// The families of the latest snapshot, handed to the registry on each gather.
struct DerivedCollector {
    descs: Vec<Desc>,
    families: Mutex<Arc<Vec<MetricFamily>>>,
}

impl Collector for DerivedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        families.as_ref().clone()
    }
}

pub struct Publisher {
    registry: Registry,
    derived: Arc<DerivedCollector>,
    /// Families of the delivery history alone: recomputed on every recorded event, cheaply.
    history: Arc<DerivedCollector>,
    derivation: Derivation,
    pub exporter: ExporterMetrics,
    current: Arc<ArcSwap<Encoded>>,
    /// Set when families changed without a re-encode (events between syncs).
    stale: std::sync::atomic::AtomicBool,
}

/// Lets the registry own a handle while the publisher keeps another.
struct Shared(Arc<DerivedCollector>);

impl Collector for Shared {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Publisher {
    pub fn new(derivation: Derivation) -> prometheus::Result<Publisher> {
        let registry = Registry::new();
        let exporter = ExporterMetrics::register(&registry)?;
        let extra = derivation.extra_label_names();
        let collector = |specs: &[Spec]| -> prometheus::Result<Arc<DerivedCollector>> {
            let descs = specs
                .iter()
                .map(|s| {
                    Desc::new(
                        s.name.to_string(),
                        s.help.to_string(),
                        s.label_names(&extra),
                        Default::default(),
                    )
                })
                .collect::<prometheus::Result<Vec<_>>>()?;
            Ok(Arc::new(DerivedCollector {
                descs,
                families: Mutex::new(Arc::new(Vec::new())),
            }))
        };
        let derived = collector(&specs())?;
        let history = collector(super::delivery::HISTORY_SPECS)?;
        registry.register(Box::new(Shared(derived.clone())))?;
        registry.register(Box::new(Shared(history.clone())))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let p = Publisher {
            registry,
            derived,
            history,
            derivation,
            exporter,
            current: Arc::new(ArcSwap::from_pointee(Encoded::default())),
            stale: std::sync::atomic::AtomicBool::new(false),
        };
        p.refresh();
        Ok(p)
    }

    /// The handle the HTTP server reads from.
    pub fn handle(&self) -> Arc<ArcSwap<Encoded>> {
        self.current.clone()
    }

    /// Derives the families of a new snapshot and the delivery history, and publishes them.
    pub fn publish(&self, snap: &Snapshot, delivery: &Delivery, now_ms: i64) {
        let families = derive(snap, delivery, &self.derivation, now_ms);
        *self
            .derived
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(families);
        self.set_history(delivery);
        self.refresh();
    }

    /// Recomputes the families of the delivery history (a few per model) without re-encoding;
    /// the caller refreshes, or leaves it to the next refresh.
    pub fn set_history(&self, delivery: &Delivery) {
        let families = super::delivery::history_families(delivery, &self.derivation);
        *self
            .history
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(families);
    }

    /// Asks for a re-encode by the next `refresh_if_stale`: events can arrive far faster than an
    /// exposition of a large install should be encoded.
    pub fn mark_stale(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Re-encodes if anything changed since the last encode.
    pub fn refresh_if_stale(&self) {
        if self.stale.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.refresh();
        }
    }

    /// Re-encodes with the current families (after a failed sync changed only the exporter's own metrics).
    pub fn refresh(&self) {
        self.stale
            .store(false, std::sync::atomic::Ordering::Release);
        let families = self.registry.gather();
        let mut text = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut text) {
            // Only an invalid family can fail; keep serving the previous bytes rather than half of them.
            tracing::error!(error = %e, "cannot encode metrics; keeping the previous exposition");
            return;
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(text.len() / 4),
            flate2::Compression::best(),
        );
        let gzip = gz
            .write_all(&text)
            .and_then(|_| gz.finish())
            .unwrap_or_default();
        self.current.store(Arc::new(Encoded {
            text: text.into(),
            gzip: gzip.into(),
        }));
    }
}
