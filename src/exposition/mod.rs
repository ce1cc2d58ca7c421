//! The publisher: turns a snapshot into the bytes `/metrics` serves, in three parts. The families derived from a
//! snapshot are encoded once per sync, in chunks: a chunk whose text did not change since the last
//! sync keeps its compressed bytes, so a cycle that changed little compresses little. The delivery
//! history's families (a histogram per model and alias: MBs at a large registry) are chunked the
//! same way, and encoded again only after an event changed them. The small, fast-changing rest (the
//! exporter's own metrics, probes) is re-encoded on a scrape when it changed or is a second old.
//! The gzip body is one deflate stream made of the parts' flushed segments.

pub mod chunks;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use flate2::Compression;
use prometheus::core::Desc;
use prometheus::{Encoder, TextEncoder};

use crate::delivery::Delivery;
use crate::lock::lock;
use crate::metrics::family::{Family, Spec, TextFamily};
use crate::metrics::{derive, Derivation};
use crate::sync::shape::Shape;
use crate::sync::Snapshot;
use crate::tally::labels::ModelFold;
use crate::tally::Tally;
use crate::telemetry::Telemetry;
pub use chunks::Encoded;
use chunks::{compress_chunks, Derived, Segment};

/// A re-encode asked for by a change waits at least this long after the previous one, so a flood of
/// events or probe results costs at most ten encodes a second.
const MIN_REENCODE_INTERVAL: Duration = Duration::from_millis(100);
/// The process metrics (CPU, memory) are at most this old when scraped.
const MAX_AGE: Duration = Duration::from_secs(1);

/// Families computed elsewhere and written at every re-encode (probe results).
type Source = Box<dyn Fn() -> Vec<TextFamily> + Send + Sync>;

/// Checks the names and labels of families encoded outside the registry, as registering them would.
fn check_specs(specs: &[Spec], extra: &[String]) -> prometheus::Result<()> {
    for spec in specs {
        Desc::new(
            spec.name.to_string(),
            spec.help.to_string(),
            spec.label_names(extra),
            Default::default(),
        )?;
    }
    Ok(())
}

/// The texts of the families that have series: a family without any is left out, as the registry's
/// gather leaves out its own.
fn texts<F: std::borrow::Borrow<TextFamily>>(families: &[F]) -> Vec<&[u8]> {
    families
        .iter()
        .map(|f| f.borrow())
        .filter(|f| f.series() > 0)
        .map(TextFamily::text)
        .collect()
}

pub struct Publisher {
    /// The exporter's own metrics, and the flag that asks for a re-encode.
    telemetry: Arc<Telemetry>,
    /// Families of the delivery history, recomputed on every recorded event (cheaply) and waiting
    /// here for the next re-encode; `None` once encoded.
    history: Mutex<Option<Vec<TextFamily>>>,
    /// What the history's families were last computed from: its events, the fold of the `model`
    /// label (by generation), and whether MLflow had workspaces.
    history_key: Mutex<Option<(u64, u64, bool)>>,
    /// What MLflow is (workspaces, MLflow 3), as the last sync found.
    shape: Arc<Shape>,
    /// The encoded families of the delivery history.
    history_encoded: Mutex<Arc<Derived>>,
    derivation: Derivation,
    /// The encoded families of the last snapshot.
    derived: Mutex<Arc<Derived>>,
    current: ArcSwap<Encoded>,
    /// One encode at a time; a scrape that finds one running serves the previous bytes.
    encoding: Mutex<()>,
    /// Families written after the registry's at every re-encode ([`Publisher::add_families`]).
    sources: Mutex<Vec<Source>>,
    /// The fold of the `model` label the history's families use (the tally's, after each sync),
    /// and how many times it changed.
    model_fold: Mutex<(ModelFold, u64)>,
    /// Samples of each family, as last published: the snapshot's, the history's, the rest's.
    derived_lines: Mutex<Vec<(&'static str, usize)>>,
    history_lines: Mutex<Vec<(&'static str, usize)>>,
    rest_lines: Mutex<Vec<(String, usize)>>,
}

impl Publisher {
    pub fn new(
        derivation: Derivation,
        telemetry: Arc<Telemetry>,
        shape: Arc<Shape>,
    ) -> prometheus::Result<Publisher> {
        check_specs(
            crate::metrics::delivery::HISTORY_SPECS,
            &derivation.extra_label_names(),
        )?;
        let empty = Arc::new(Segment::empty());
        let p = Publisher {
            telemetry,
            history: Mutex::default(),
            history_key: Mutex::default(),
            shape,
            history_encoded: Mutex::default(),
            derivation,
            current: ArcSwap::from_pointee(Encoded::join(&Arc::default(), &Arc::default(), &empty)),
            derived: Mutex::default(),
            encoding: Mutex::new(()),
            sources: Mutex::default(),
            model_fold: Mutex::default(),
            derived_lines: Mutex::default(),
            history_lines: Mutex::default(),
            rest_lines: Mutex::default(),
        };
        p.refresh();
        Ok(p)
    }

    /// A publisher with telemetry and a shape of its own (MLflow 2, no workspaces until told):
    /// for tools, benches and tests that publish without a pipeline.
    pub fn detached(derivation: Derivation) -> prometheus::Result<Publisher> {
        Publisher::new(derivation, Arc::new(Telemetry::new()?), Arc::default())
    }

    /// The shape the families are published by.
    pub fn shape(&self) -> &Arc<Shape> {
        &self.shape
    }

    /// Serves the probes' families from their records, as of each re-encode.
    pub fn add_probes(&self, book: Arc<crate::probes::ProbeBook>) -> prometheus::Result<()> {
        self.add_families(crate::metrics::probes::SPECS, move || {
            crate::metrics::probes::families(&book)
        })
    }

    /// Adds families written at every re-encode: `specs` declares them, `source` returns their
    /// series as of now.
    fn add_families(
        &self,
        specs: &[Spec],
        source: impl Fn() -> Vec<TextFamily> + Send + Sync + 'static,
    ) -> prometheus::Result<()> {
        check_specs(specs, &[])?;
        lock(&self.sources).push(Box::new(source));
        Ok(())
    }

    /// What a scrape serves now: re-encodes first if something changed (at most every 100 ms) or
    /// the last encode is older than a second.
    pub fn current(&self) -> Arc<Encoded> {
        let cur = self.current.load_full();
        let age = cur.at.elapsed();
        let stale = self.telemetry.pending();
        if (stale && age >= MIN_REENCODE_INTERVAL) || age >= MAX_AGE {
            if let Ok(_one) = self.encoding.try_lock() {
                self.encode_rest();
                return self.current.load_full();
            }
        }
        cur
    }

    /// Derives the families of a new snapshot, its tally and the delivery history, and publishes
    /// them.
    pub fn publish(&self, snap: &Snapshot, tally: &Tally, delivery: &Delivery, now_ms: i64) {
        let families = derive(snap, tally, delivery, &self.derivation, now_ms);
        self.publish_families(&families, delivery);
    }

    fn in_workspaces(&self, families: Vec<TextFamily>) -> Vec<TextFamily> {
        match self.shape.workspaces() {
            true => families
                .into_iter()
                .map(crate::metrics::workspace::split)
                .collect(),
            false => families,
        }
    }

    /// The derived families as served, in one pass: without what only an MLflow 3 has when the
    /// server is older, and with workspace labels when it has workspaces. Only the text of a
    /// family that gets the label is written anew; the others are borrowed.
    fn servable<'a>(&self, families: &'a [TextFamily]) -> Vec<Cow<'a, TextFamily>> {
        let (mlflow3, workspaces) = (self.shape.mlflow3(), self.shape.workspaces());
        families
            .iter()
            .filter(|f| mlflow3 || !crate::metrics::MLFLOW3_ONLY.contains(&f.name()))
            .map(|f| match workspaces {
                true => crate::metrics::workspace::split_ref(f),
                false => Cow::Borrowed(f),
            })
            .collect()
    }

    /// Publishes families derived from a snapshot and its tally (and the history, if it changed).
    pub fn publish_families(&self, families: &[TextFamily], delivery: &Delivery) {
        let families = self.servable(families);
        let families = &families[..];
        *lock(&self.derived_lines) = lines_by_family(families);
        // The lock is not held while compressing: a scrape re-encoding the rest reads it.
        let previous = lock(&self.derived).clone();
        let chunks = compress_chunks(&texts(families), &previous.chunks);
        *lock(&self.derived) = Arc::new(Derived::new(chunks));
        self.offer_history(delivery);
        self.refresh();
    }

    /// Takes the fold of the `model` label for the history's families (the next
    /// [`Publisher::offer_history`] recomputes them if it changed).
    pub fn set_model_fold(&self, fold: ModelFold) {
        let mut cur = lock(&self.model_fold);
        if cur.0 != fold {
            *cur = (fold, cur.1 + 1);
        }
    }

    /// The exporter's own metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The compiled settings the families are derived with.
    pub fn derivation(&self) -> &Derivation {
        &self.derivation
    }

    /// Samples served by everything but the families derived from the snapshot and its tally, as
    /// last encoded: the delivery history's, the exporter's own, the probes'.
    pub fn other_lines(&self) -> usize {
        let history: usize = lock(&self.history_lines).iter().map(|(_, n)| n).sum();
        let rest: usize = lock(&self.rest_lines)
            .iter()
            .filter(|(name, _)| name != SERIES.name)
            .map(|(_, n)| n)
            .sum();
        history + rest
    }

    /// Families of those (`mlflow_exporter_series` has a series for each of them and for every
    /// family of the snapshot and tally, and two more).
    pub fn other_families(&self) -> usize {
        let rest = lock(&self.rest_lines)
            .iter()
            .filter(|(name, _)| name != SERIES.name && name != SERIES_LIMIT.name)
            .count();
        lock(&self.history_lines).len() + rest
    }

    /// The one path by which the delivery history reaches the exposition: its families (a few per
    /// model) are recomputed, without re-encoding, when its events, the fold of the `model` label
    /// or MLflow's workspaces changed since the last offer; the next scrape re-encodes them.
    pub fn offer_history(&self, delivery: &Delivery) {
        let (fold, generation) = lock(&self.model_fold).clone();
        let key = (delivery.events, generation, self.shape.workspaces());
        if *lock(&self.history_key) == Some(key) {
            return;
        }
        let families =
            crate::metrics::delivery::history_families(delivery, &self.derivation, &fold);
        *lock(&self.history_lines) = lines_by_family(&families);
        let families = self.in_workspaces(families);
        *lock(&self.history) = Some(families);
        *lock(&self.history_key) = Some(key);
        self.telemetry.changed();
    }

    /// Re-encodes now (after a sync, or a failed one that changed only the exporter's own metrics).
    pub fn refresh(&self) {
        let _one = lock(&self.encoding);
        self.encode_rest();
    }

    /// Encodes the registry's families (and the history's, if they changed) and joins them to the
    /// snapshot's. Caller holds `encoding`.
    fn encode_rest(&self) {
        self.telemetry.take_changed();
        let changed = lock(&self.history).take();
        if let Some(families) = changed {
            let previous = lock(&self.history_encoded).clone();
            let chunks = compress_chunks(&texts(&families), &previous.chunks);
            *lock(&self.history_encoded) = Arc::new(Derived::new(chunks));
        }
        let mut text = Vec::with_capacity(16 * 1024);
        let gathered = self.telemetry.gather();
        if let Err(e) = TextEncoder::new().encode(&gathered, &mut text) {
            // Only an invalid family can fail; keep serving the previous bytes rather than half of them.
            tracing::error!(error = %e, "cannot encode metrics; keeping the previous exposition");
            return;
        }
        let mut rest: Vec<(String, usize)> = gathered
            .iter()
            .map(|f| (f.name().to_string(), proto_lines(f)))
            .collect();
        for source in lock(&self.sources).iter() {
            // A probe of a workspace's model names it `workspace/model` (see `probes.workspace`).
            for family in self.in_workspaces(source()) {
                if family.series() > 0 {
                    text.extend_from_slice(family.text());
                    rest.push((family.name().to_string(), family.lines()));
                }
            }
        }
        // What is served, by family: this family itself is the last, with a series per family
        // and one for the limit.
        let mut served: Vec<(String, usize)> = lock(&self.derived_lines)
            .iter()
            .chain(lock(&self.history_lines).iter())
            .map(|(n, l)| (n.to_string(), *l))
            .chain(rest.iter().cloned())
            .collect();
        served.push((SERIES.name.to_string(), served.len() + 2));
        served.push((SERIES_LIMIT.name.to_string(), 1));
        served.sort();
        let mut series = Family::live(&SERIES);
        for (name, n) in &served {
            series.add(&[name], *n as f64);
        }
        text.extend_from_slice(series.finish().text());
        let mut limit = Family::live(&SERIES_LIMIT);
        limit.add(&[], self.derivation.settings.max_series as f64);
        text.extend_from_slice(limit.finish().text());
        rest.push((SERIES.name.to_string(), served.len()));
        rest.push((SERIES_LIMIT.name.to_string(), 1));
        *lock(&self.rest_lines) = rest;
        let rest = Segment::new(text, Compression::default(), true, true);
        let derived = lock(&self.derived).clone();
        let history = lock(&self.history_encoded).clone();
        self.current
            .store(Arc::new(Encoded::join(&derived, &history, &rest)));
    }
}

/// `mlflow_exporter_series`: what one scrape holds, by family.
pub const SERIES: Spec = Spec::gauge(
    "mlflow_exporter_series",
    "Series (samples) this exporter serves per scrape, by family; the total is held under metrics.max_series by folding new label combinations into __other__",
    &["family"],
);
pub const SERIES_LIMIT: Spec = Spec::gauge(
    "mlflow_exporter_series_limit",
    "The series budget, metrics.max_series",
    &[],
);

/// Samples of each family.
fn lines_by_family<F: std::borrow::Borrow<TextFamily>>(
    families: &[F],
) -> Vec<(&'static str, usize)> {
    families
        .iter()
        .map(|f| (f.borrow().name(), f.borrow().lines()))
        .collect()
}

/// Samples the text encoder writes for a gathered family.
fn proto_lines(f: &prometheus::proto::MetricFamily) -> usize {
    use prometheus::proto::MetricType;
    f.get_metric()
        .iter()
        .map(|m| match f.get_field_type() {
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let inf = h
                    .get_bucket()
                    .last()
                    .is_some_and(|b| b.upper_bound() == f64::INFINITY);
                h.get_bucket().len() + usize::from(!inf) + 2
            }
            MetricType::SUMMARY => m.get_summary().get_quantile().len() + 2,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    pub(crate) fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // A single-member decoder: the joined body must be one gzip member, as every client expects.
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_snapshot_with_empty_families_is_published_without_them() {
        let settings = crate::config::Settings::default();
        let p = Publisher::detached(Derivation::new(&settings)).unwrap();
        let history = Delivery::new(crate::delivery::Bounds::new(&settings.delivery));
        p.publish(
            &Snapshot::default(),
            &crate::tally::Tally::new(&settings),
            &history,
            0,
        );
        let text = String::from_utf8(p.current().text().to_vec()).unwrap();
        // An empty MLflow: gauges without labels are 0, families without series are left out.
        assert!(text.contains("\nmlflow_registered_models 0\n"), "{text}");
        assert!(
            !text.contains("# TYPE mlflow_model_alias_version"),
            "{text}"
        );
        assert_eq!(gunzip(&p.current().gzip()), text.as_bytes());
    }

    #[test]
    fn the_history_is_encoded_again_only_when_an_event_changed_it() {
        use crate::delivery::{Event, Kind, Source};
        let settings = crate::config::Settings::default();
        let p = Publisher::detached(Derivation::new(&settings)).unwrap();
        let mut history = Delivery::new(crate::delivery::Bounds::new(&settings.delivery));
        history.apply(&Event::incident(
            Kind::IncidentOpened,
            Source::Api,
            "i1",
            "m",
            "sev1",
            1_000,
        ));
        p.publish(
            &Snapshot::default(),
            &crate::tally::Tally::new(&settings),
            &history,
            0,
        );
        let first = p.current();
        let text = String::from_utf8(first.text().to_vec()).unwrap();
        assert!(
            text.contains("mlflow_incidents_open{model=\"m\",severity=\"sev1\"} 1\n"),
            "{text}"
        );

        // Another sync, the same history: its encoded part is the same one.
        p.publish(
            &Snapshot::default(),
            &crate::tally::Tally::new(&settings),
            &history,
            10_000,
        );
        assert!(Arc::ptr_eq(&first.history, &p.current().history));

        // An event recorded: the history is set and encoded by the next re-encode.
        history.apply(&Event::incident(
            Kind::IncidentResolved,
            Source::Api,
            "i1",
            "m",
            "sev1",
            61_000,
        ));
        p.offer_history(&history);
        p.refresh();
        let now = p.current();
        assert!(!Arc::ptr_eq(&first.history, &now.history));
        let text = String::from_utf8(now.text().to_vec()).unwrap();
        assert!(
            text.contains("mlflow_incidents_open{model=\"m\",severity=\"sev1\"} 0\n"),
            "{text}"
        );
        assert_eq!(gunzip(&now.gzip()), text.as_bytes());
    }
}
