//! Turns a snapshot into the bytes `/metrics` serves, in three parts. The families derived from a
//! snapshot are encoded once per sync, in chunks: a chunk whose text did not change since the last
//! sync keeps its compressed bytes, so a cycle that changed little compresses little. The delivery
//! history's families (a histogram per model and alias: MBs at a large registry) are chunked the
//! same way, and encoded again only after an event changed them. The small, fast-changing rest (the
//! exporter's own metrics, probes) is re-encoded on a scrape when it changed or is a second old.
//! The gzip body is one deflate stream made of the parts' flushed segments.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use prometheus::core::Desc;
use prometheus::{Encoder, Registry, TextEncoder};

use super::exporter::ExporterMetrics;
use super::family::{Family, Spec, TextFamily};
use super::{derive, halfway, in_parallel, Derivation};
use crate::delivery::Delivery;
use crate::lock::lock;
use crate::sync::Snapshot;
use crate::tally::labels::ModelFold;
use crate::tally::Tally;

/// A re-encode asked for by a change waits at least this long after the previous one, so a flood of
/// events or probe results costs at most ten encodes a second.
const MIN_REENCODE_INTERVAL: Duration = Duration::from_millis(100);
/// The process metrics (CPU, memory) are at most this old when scraped.
const MAX_AGE: Duration = Duration::from_secs(1);

/// One part of the exposition, encoded as a raw deflate segment that ends on a byte boundary (sync
/// flush, or the final block for the last part), so segments concatenate; and as text. A snapshot's
/// text (tens of MB at a million runs) is not kept: Prometheus always asks for gzip, so it is
/// inflated again on the first scrape that asks for plain text, and kept until the next snapshot.
#[derive(Debug)]
struct Segment {
    text: OnceLock<Bytes>,
    len: usize,
    /// [`chunk_hash`] of the text.
    hash: u64,
    deflate: Bytes,
    crc: crc32fast::Hasher,
}

impl Segment {
    fn empty() -> Segment {
        Segment::new(Vec::new(), Compression::fast(), false, true)
    }

    fn new(text: Vec<u8>, level: Compression, last: bool, keep_text: bool) -> Segment {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&text);
        let deflate = deflate(&text, level, last);
        let kept = OnceLock::new();
        let len = text.len();
        let hash = chunk_hash(&text);
        if keep_text {
            let _ = kept.set(Bytes::from(text));
        }
        Segment {
            text: kept,
            len,
            hash,
            deflate: deflate.into(),
            crc,
        }
    }

    fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| inflate(&self.deflate, self.len).into())
            .clone()
    }
}

/// Inflates a raw deflate segment (ended by a sync flush or a final block) of `len` bytes of text.
fn inflate(segment: &[u8], len: usize) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(len);
    while (d.total_in() as usize) < segment.len() && out.len() < len {
        let done = d.total_in() as usize;
        // The segment is our own output: an error would be a bug, and leaves the text short.
        match d.decompress_vec(&segment[done..], &mut out, FlushDecompress::Sync) {
            Ok(Status::StreamEnd) | Err(_) => break,
            Ok(_) if d.total_in() as usize == done && out.len() < out.capacity() => break,
            Ok(_) => out.reserve(64 * 1024),
        }
    }
    out
}

/// Raw deflate of `input`: a sync flush leaves the stream open on a byte boundary for the next
/// segment; `last` writes the final block.
fn deflate(input: &[u8], level: Compression, last: bool) -> Vec<u8> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(input.len() / 4 + 64);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        out.reserve(64 * 1024);
        let done = c.total_in() as usize;
        // Only a misuse of the stream can fail here; the state is local, so it cannot happen.
        let status = c
            .compress_vec(&input[done..], &mut out, flush)
            .unwrap_or(Status::StreamEnd);
        let consumed = c.total_in() as usize == input.len();
        if status == Status::StreamEnd || (!last && consumed && out.len() < out.capacity()) {
            return out;
        }
    }
}

/// The snapshot's part: its chunks (for the next publish to reuse, and for plain text), and their
/// deflate bytes joined once per publish, so that a scrape sends one buffer for them, not hundreds.
#[derive(Debug, Default)]
struct Derived {
    chunks: Vec<Arc<Segment>>,
    deflate: Bytes,
    crc: crc32fast::Hasher,
    len: usize,
}

impl Derived {
    fn new(chunks: Vec<Arc<Segment>>) -> Derived {
        let mut crc = crc32fast::Hasher::new();
        for c in &chunks {
            crc.combine(&c.crc);
        }
        let deflate: Vec<u8> = chunks
            .iter()
            .flat_map(|c| c.deflate.iter().copied())
            .collect();
        let len = chunks.iter().map(|c| c.len).sum();
        Derived {
            chunks,
            deflate: deflate.into(),
            crc,
            len,
        }
    }
}

/// One encoded exposition, as served: the parts are sent one after another without copying.
#[derive(Debug, Clone)]
pub struct Encoded {
    derived: Arc<Derived>,
    history: Arc<Derived>,
    rest_text: Bytes,
    gzip: [Bytes; 5],
    at: Instant,
}

impl Encoded {
    fn join(derived: &Arc<Derived>, history: &Arc<Derived>, rest: &Segment) -> Encoded {
        let mut crc = derived.crc.clone();
        crc.combine(&history.crc);
        crc.combine(&rest.crc);
        let len = derived.len + history.len + rest.len;
        // Member header: deflate, no name, no mtime, unknown OS (RFC 1952).
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&(len as u32).to_le_bytes());
        Encoded {
            derived: derived.clone(),
            history: history.clone(),
            rest_text: rest.text(),
            gzip: [
                Bytes::from_static(&HEADER),
                derived.deflate.clone(),
                history.deflate.clone(),
                rest.deflate.clone(),
                trailer.into(),
            ],
            at: Instant::now(),
        }
    }

    /// The whole text exposition in one buffer (tests and tools; the server sends the parts).
    pub fn text(&self) -> Bytes {
        concat(&self.text_parts())
    }

    fn text_parts(&self) -> Vec<Bytes> {
        self.derived
            .chunks
            .iter()
            .chain(&self.history.chunks)
            .map(|c| c.text())
            .chain([self.rest_text.clone()])
            .collect()
    }

    /// The whole gzip body in one buffer.
    pub fn gzip(&self) -> Bytes {
        concat(&self.gzip)
    }

    /// The response body, gzip or plain, with its exact length.
    pub fn body(&self, gzip: bool) -> axum::body::Body {
        let text: Vec<Bytes>;
        let parts: &[Bytes] = if gzip {
            &self.gzip
        } else {
            text = self.text_parts();
            &text
        };
        axum::body::Body::new(Parts(
            parts.iter().filter(|b| !b.is_empty()).cloned().collect(),
        ))
    }
}

fn concat(parts: &[Bytes]) -> Bytes {
    parts.concat().into()
}

/// A body made of buffers sent in order; its size is known, so it goes out with a Content-Length.
struct Parts(std::collections::VecDeque<Bytes>);

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

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
    registry: Registry,
    /// Families of the delivery history, recomputed on every recorded event (cheaply) and waiting
    /// here for the next re-encode; `None` once encoded.
    history: Mutex<Option<Vec<TextFamily>>>,
    /// [`Delivery::events`] of the history last handed to [`Publisher::set_history`].
    history_events: std::sync::atomic::AtomicU64,
    /// MLflow has workspaces: `workspace/name` values become a `workspace` label as published.
    workspaces: std::sync::atomic::AtomicBool,
    /// MLflow is an MLflow 3 (it answers server-info): the families of what only MLflow 3 has
    /// (logged models) are published; an MLflow 2 has none of them, not even at 0.
    mlflow3: std::sync::atomic::AtomicBool,
    /// The encoded families of the delivery history.
    history_encoded: Mutex<Arc<Derived>>,
    derivation: Derivation,
    pub exporter: ExporterMetrics,
    /// The encoded families of the last snapshot.
    derived: Mutex<Arc<Derived>>,
    current: ArcSwap<Encoded>,
    /// One encode at a time; a scrape that finds one running serves the previous bytes.
    encoding: Mutex<()>,
    /// Set when the registry's families changed since the last encode.
    stale: std::sync::atomic::AtomicBool,
    /// Families written after the registry's at every re-encode ([`Publisher::add_families`]).
    sources: Mutex<Vec<Source>>,
    /// The fold of the `model` label the history's families use (the tally's, after each sync).
    model_fold: Mutex<ModelFold>,
    /// Samples of each family, as last published: the snapshot's, the history's, the rest's.
    derived_lines: Mutex<Vec<(&'static str, usize)>>,
    history_lines: Mutex<Vec<(&'static str, usize)>>,
    rest_lines: Mutex<Vec<(String, usize)>>,
}

impl Publisher {
    pub fn new(derivation: Derivation) -> prometheus::Result<Publisher> {
        let registry = Registry::new();
        let exporter = ExporterMetrics::register(&registry)?;
        check_specs(
            super::delivery::HISTORY_SPECS,
            &derivation.extra_label_names(),
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let empty = Arc::new(Segment::empty());
        let p = Publisher {
            registry,
            history: Mutex::default(),
            history_events: std::sync::atomic::AtomicU64::new(u64::MAX),
            workspaces: std::sync::atomic::AtomicBool::new(false),
            mlflow3: std::sync::atomic::AtomicBool::new(false),
            history_encoded: Mutex::default(),
            derivation,
            exporter,
            current: ArcSwap::from_pointee(Encoded::join(&Arc::default(), &Arc::default(), &empty)),
            derived: Mutex::default(),
            encoding: Mutex::new(()),
            stale: std::sync::atomic::AtomicBool::new(false),
            sources: Mutex::default(),
            model_fold: Mutex::default(),
            derived_lines: Mutex::default(),
            history_lines: Mutex::default(),
            rest_lines: Mutex::default(),
        };
        p.refresh();
        Ok(p)
    }

    /// Adds families written at every re-encode (probe results): `specs` declares them, `source`
    /// returns their series as of now.
    pub fn add_families(
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
        let stale = self.stale.load(std::sync::atomic::Ordering::Acquire);
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

    /// Says whether MLflow has workspaces (see [`super::workspace`]), from the next publish on.
    pub fn set_workspaces(&self, enabled: bool) {
        let was = self
            .workspaces
            .swap(enabled, std::sync::atomic::Ordering::AcqRel);
        if was != enabled {
            // The history's families are published under the new labels too.
            self.history_events
                .store(u64::MAX, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether MLflow has workspaces, as of the last sync: models pushed by webhooks are then
    /// named `workspace/name`, as the snapshot names them.
    pub fn workspaces_enabled(&self) -> bool {
        self.workspaces.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Says whether MLflow is an MLflow 3, from the next publish on.
    pub fn set_mlflow3(&self, mlflow3: bool) {
        self.mlflow3
            .store(mlflow3, std::sync::atomic::Ordering::Release);
    }

    fn in_workspaces(&self, families: Vec<TextFamily>) -> Vec<TextFamily> {
        match self.workspaces.load(std::sync::atomic::Ordering::Acquire) {
            true => families.into_iter().map(super::workspace::split).collect(),
            false => families,
        }
    }

    /// The derived families as served, in one pass: without what only an MLflow 3 has when the
    /// server is older, and with workspace labels when it has workspaces. Only the text of a
    /// family that gets the label is written anew; the others are borrowed.
    fn servable<'a>(&self, families: &'a [TextFamily]) -> Vec<Cow<'a, TextFamily>> {
        let mlflow3 = self.mlflow3.load(std::sync::atomic::Ordering::Acquire);
        let workspaces = self.workspaces.load(std::sync::atomic::Ordering::Acquire);
        families
            .iter()
            .filter(|f| mlflow3 || !super::MLFLOW3_ONLY.contains(&f.name()))
            .map(|f| match workspaces {
                true => super::workspace::split_ref(f),
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
        // The history changes by recorded events, which set it themselves; a caller's own history
        // (tests, tools) is taken when it is not the one last set.
        let seen = self
            .history_events
            .load(std::sync::atomic::Ordering::Acquire);
        if seen != delivery.events {
            self.set_history(delivery);
        }
        self.refresh();
    }

    /// Takes the fold of the `model` label for the history's families; true when it changed (the
    /// history's families are then to be recomputed).
    pub fn set_model_fold(&self, fold: ModelFold) -> bool {
        let mut cur = lock(&self.model_fold);
        let changed = *cur != fold;
        *cur = fold;
        changed
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

    /// Recomputes the families of the delivery history (a few per model) without re-encoding;
    /// the next scrape re-encodes them.
    pub fn set_history(&self, delivery: &Delivery) {
        let fold = lock(&self.model_fold).clone();
        let families = super::delivery::history_families(delivery, &self.derivation, &fold);
        *lock(&self.history_lines) = lines_by_family(&families);
        let families = self.in_workspaces(families);
        *lock(&self.history) = Some(families);
        self.history_events
            .store(delivery.events, std::sync::atomic::Ordering::Release);
        self.mark_stale();
    }

    /// Asks for a re-encode by the next scrape: events and probe results can arrive far faster
    /// than anyone scrapes.
    pub fn mark_stale(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Re-encodes now (after a sync, or a failed one that changed only the exporter's own metrics).
    pub fn refresh(&self) {
        let _one = lock(&self.encoding);
        self.encode_rest();
    }

    /// Encodes the registry's families (and the history's, if they changed) and joins them to the
    /// snapshot's. Caller holds `encoding`.
    fn encode_rest(&self) {
        self.stale
            .store(false, std::sync::atomic::Ordering::Release);
        let changed = lock(&self.history).take();
        if let Some(families) = changed {
            let previous = lock(&self.history_encoded).clone();
            let chunks = compress_chunks(&texts(&families), &previous.chunks);
            *lock(&self.history_encoded) = Arc::new(Derived::new(chunks));
        }
        let mut text = Vec::with_capacity(16 * 1024);
        let gathered = self.registry.gather();
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

/// Lines of a family per chunk: small enough that a cycle in which a few running runs advanced
/// recompresses a small share, large enough that chunks still compress well. At 100 000 real runs
/// the 63 running ones change a quarter of 2 000-line chunks (30 ms to compress again) and less of
/// 500-line ones (17–22 ms), for a body 5 % larger.
const CHUNK_LINES: usize = 500;

/// Chunks of an exposition given in parts (each starting with a family), compressed, reusing the
/// compressed bytes of `previous` chunks whose text is the same. Chunks start at every family and
/// every [`CHUNK_LINES`] lines within one, so a changed value changes one chunk, and a series added
/// or gone shifts only its own family's. The chunks to compress are shared between two threads.
fn compress_chunks(parts: &[&[u8]], previous: &[Arc<Segment>]) -> Vec<Arc<Segment>> {
    let known: HashMap<(u64, usize), &Arc<Segment>> =
        previous.iter().map(|c| ((c.hash, c.len), c)).collect();
    let mut pieces: Vec<&[u8]> = Vec::new();
    for text in parts {
        cut_chunks(text, &mut pieces);
    }
    let mut chunks: Vec<Option<Arc<Segment>>> = pieces
        .iter()
        .map(|p| known.get(&(chunk_hash(p), p.len())).map(|c| Arc::clone(c)))
        .collect();
    let fresh: Vec<usize> = (0..pieces.len()).filter(|&i| chunks[i].is_none()).collect();
    let compress = |ids: &[usize]| -> Vec<(usize, Segment)> {
        ids.iter()
            .map(|&i| {
                let text = pieces[i].to_vec();
                (i, Segment::new(text, Compression::default(), false, false))
            })
            .collect()
    };
    let bytes: usize = fresh.iter().map(|&i| pieces[i].len()).sum();
    // A small part (the history re-encoded on a scrape) is not worth a thread.
    let done = if bytes < 256 * 1024 {
        compress(&fresh)
    } else {
        let (first, second) = fresh.split_at(halfway(fresh.iter().map(|&i| pieces[i].len())));
        let (mut done, rest) = in_parallel(|| compress(first), || compress(second));
        done.extend(rest);
        done
    };
    for (i, segment) in done {
        chunks[i] = Some(Arc::new(segment));
    }
    chunks.into_iter().flatten().collect()
}

/// Cuts `text` into chunk pieces: at every `# HELP` line (a family's first) and every
/// [`CHUNK_LINES`] lines within a family.
fn cut_chunks<'t>(text: &'t [u8], pieces: &mut Vec<&'t [u8]>) {
    let (mut start, mut lines) = (0, 0);
    let mut at = 0;
    while at < text.len() {
        let end = memchr_newline(&text[at..]).map_or(text.len(), |i| at + i + 1);
        // A family starts with its HELP line; the encoder writes HELP then TYPE.
        let family_start = text[at..].starts_with(b"# HELP ");
        if (family_start || lines == CHUNK_LINES) && at > start {
            pieces.push(&text[start..at]);
            (start, lines) = (at, 0);
        }
        lines += 1;
        at = end;
    }
    if text.len() > start {
        pieces.push(&text[start..]);
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// A 64-bit hash of a chunk's text (with its length, it says the text is unchanged: a false match
/// has odds of 2^-64).
fn chunk_hash(piece: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6d6c_666c_6f77).hash_one(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(b: &[u8]) -> Vec<u8> {
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
        let p = Publisher::new(Derivation::new(&settings)).unwrap();
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
        let p = Publisher::new(Derivation::new(&settings)).unwrap();
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
        p.set_history(&history);
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

    /// `families` families of `lines` series each; `bump` changes the value of one series.
    fn exposition(families: usize, lines: usize, bump: Option<(usize, usize)>) -> Vec<u8> {
        let mut t = String::new();
        for f in 0..families {
            t.push_str(&format!("# HELP f{f} Family {f}\n# TYPE f{f} gauge\n"));
            for l in 0..lines {
                let v = if bump == Some((f, l)) { 2 } else { 1 };
                t.push_str(&format!("f{f}{{series=\"{l}\"}} {v}\n"));
            }
        }
        t.into_bytes()
    }

    fn gzip_of(chunks: Vec<Arc<Segment>>) -> Vec<u8> {
        let rest = Segment::new(b"rest 1\n".to_vec(), Compression::default(), true, true);
        gunzip(&Encoded::join(&Arc::new(Derived::new(chunks)), &Arc::default(), &rest).gzip())
    }

    #[test]
    fn chunks_start_at_families_and_every_chunk_lines() {
        let text = exposition(3, CHUNK_LINES + 10, None);
        let chunks = compress_chunks(&[&text], &[]);
        // Per family: HELP, TYPE and the first CHUNK_LINES - 2 series, then the rest.
        assert_eq!(chunks.len(), 6);
        let lines: Vec<usize> = chunks
            .iter()
            .map(|c| c.text().iter().filter(|&&b| b == b'\n').count())
            .collect();
        assert_eq!(lines, [CHUNK_LINES, 12, CHUNK_LINES, 12, CHUNK_LINES, 12]);
        assert!(chunks[2].text().starts_with(b"# HELP f1 "));
        assert_eq!(gzip_of(chunks), [text, b"rest 1\n".to_vec()].concat());
    }

    #[test]
    fn a_large_exposition_is_compressed_on_two_threads_in_order() {
        // Over the 256 KiB below which the chunks are compressed on the calling thread.
        let text = exposition(4, 10_000, None);
        assert!(text.len() > 256 * 1024);
        let chunks = compress_chunks(&[&text[..text.len() / 2], &text[text.len() / 2..]], &[]);
        assert_eq!(gzip_of(chunks), [text, b"rest 1\n".to_vec()].concat());
    }

    #[test]
    fn an_unchanged_chunk_keeps_its_compressed_bytes() {
        // Three families of two chunks each.
        let lines = CHUNK_LINES * 3 / 2;
        let first = compress_chunks(&[&exposition(3, lines, None)], &[]);
        assert_eq!(first.len(), 6);
        let same = compress_chunks(&[&exposition(3, lines, None)], &first);
        assert!(first.iter().zip(&same).all(|(a, b)| Arc::ptr_eq(a, b)));
        // One value changed in the second family's second chunk: that chunk alone is new.
        let text = exposition(3, lines, Some((1, CHUNK_LINES + 10)));
        let changed = compress_chunks(&[&text], &first);
        let fresh: Vec<usize> = (0..changed.len())
            .filter(|&i| !Arc::ptr_eq(&first[i], &changed[i]))
            .collect();
        assert_eq!(fresh, [3]);
        assert_eq!(gzip_of(changed), [text, b"rest 1\n".to_vec()].concat());
        // An empty exposition has no chunks.
        assert!(compress_chunks(&[b""], &first).is_empty());
    }

    #[test]
    fn joined_segments_are_one_gzip_member_of_the_three_parts() {
        let a: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("a{{i=\"{i}\"}} {i}\n").into_bytes())
            .collect();
        let h = b"h_total 2\n".to_vec();
        let b = b"b_total 1\n".to_vec();
        let part = |text: &Vec<u8>| {
            Arc::new(Derived::new(vec![Arc::new(Segment::new(
                text.clone(),
                Compression::best(),
                false,
                false,
            ))]))
        };
        for x in [a.clone(), Vec::new()] {
            for m in [h.clone(), Vec::new()] {
                for y in [b.clone(), Vec::new()] {
                    let rest = Segment::new(y.clone(), Compression::default(), true, true);
                    let e = Encoded::join(&part(&x), &part(&m), &rest);
                    let whole = [x.clone(), m.clone(), y].concat();
                    assert_eq!(e.text().as_ref(), whole.as_slice());
                    assert_eq!(gunzip(&e.gzip()), whole);
                }
            }
        }
    }
}
