//! Keeps the [`Snapshot`] in step with MLflow: a full read first and then every
//! `full_resync_interval` (the only way to notice deleted runs), incremental cycles in between that
//! fetch only runs that ended or are still running, new model versions and the experiments, and the
//! registered models every `registry_interval`.
//! A cycle reads everything before it changes anything, so a failed cycle leaves the snapshot as it was.

pub mod extract;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Settings;
use crate::error::MlflowError;
use crate::source::mlflow::client::RunsQuery;
use crate::source::mlflow::model::{Experiment, ModelVersion, RegisteredModel};
use crate::source::mlflow::MlflowClient;
pub use extract::{Extractor, PageRecords, RateCard};
pub use snapshot::Snapshot;
use snapshot::{
    run_id, ExperimentRecord, Interner, ModelRecord, RunKey, RunRecord, RunStatus, Sym,
    VersionRecord,
};

/// Which kind of cycle ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Incremental,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

/// What one successful cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    pub mode: Mode,
    /// HTTP requests that returned a page (retries not counted).
    pub requests: usize,
    pub runs_read: usize,
    pub seconds: f64,
}

pub struct Syncer {
    client: MlflowClient,
    /// Shared with the threads that decode pages.
    extractor: Arc<Extractor>,
    full_every_ms: i64,
    overlap_ms: i64,
    registry_every_ms: i64,
    running_every_ms: i64,
    snapshot: Snapshot,
    /// `now` of the last successful cycle and of the last successful full one.
    cursor_ms: Option<i64>,
    last_full_ms: Option<i64>,
    /// `now` of the last cycle that read the registered models.
    last_models_ms: Option<i64>,
    /// `now` of the last cycle that searched every running run.
    last_running_ms: Option<i64>,
    /// The experiments as MLflow spells their ids, at the last successful cycle.
    experiment_ids: Vec<String>,
    /// Runs the last full read no longer found (removed for good, e.g. by `mlflow gc`), with their
    /// last records, until the tally takes them.
    gone: Vec<(RunKey, RunRecord)>,
    /// A full read replaced the snapshot since the tally last counted it.
    full_uncounted: bool,
}

impl Syncer {
    pub fn new(client: MlflowClient, settings: &Settings) -> Syncer {
        Syncer {
            client,
            extractor: Arc::new(Extractor::new(settings)),
            full_every_ms: settings.mlflow.full_resync_interval.as_millis() as i64,
            overlap_ms: settings.mlflow.sync_overlap.as_millis() as i64,
            registry_every_ms: settings.mlflow.registry_interval.as_millis() as i64,
            running_every_ms: settings.mlflow.running_interval.as_millis() as i64,
            snapshot: Snapshot::default(),
            cursor_ms: None,
            last_full_ms: None,
            last_models_ms: None,
            last_running_ms: None,
            experiment_ids: Vec::new(),
            gone: Vec::new(),
            full_uncounted: false,
        }
    }

    /// Changes `mlflow.registry_interval` from the next cycle on.
    pub fn set_registry_interval(&mut self, every: std::time::Duration) {
        self.registry_every_ms = every.as_millis() as i64;
    }

    /// Changes `mlflow.running_interval` from the next cycle on.
    pub fn set_running_interval(&mut self, every: std::time::Duration) {
        self.running_every_ms = every.as_millis() as i64;
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot, for the tally's bookkeeping in its run records.
    pub fn snapshot_mut(&mut self) -> &mut Snapshot {
        &mut self.snapshot
    }

    /// The runs full reads found removed since the last call, with their last records, and
    /// whether a full read replaced the snapshot since then (objects missing from it are gone).
    pub fn take_gone(&mut self) -> (Vec<(RunKey, RunRecord)>, bool) {
        let full = std::mem::take(&mut self.full_uncounted);
        (std::mem::take(&mut self.gone), full)
    }

    /// True once a cycle has succeeded.
    pub fn has_synced(&self) -> bool {
        self.cursor_ms.is_some()
    }

    /// Runs a full cycle when none has run or one is due, else an incremental one. `now_ms` is the
    /// cycle's reference time: running runs are timed up to it, and the next cursor is derived from it.
    pub async fn cycle(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        match self.last_full_ms {
            Some(last) if now_ms - last < self.full_every_ms => self.incremental(now_ms).await,
            _ => self.full(now_ms).await,
        }
    }

    /// Reads everything and replaces the snapshot.
    pub async fn full(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        let started = Instant::now();
        let mut next = Snapshot::default();
        let ex = &self.extractor;
        let (experiments, mut requests) = self.client.experiments().await?;
        let (records, ids) = experiment_records(ex, &mut next.strings, &experiments);
        next.experiments = records;
        let (n, runs_read) = read_runs(
            &self.client,
            &self.extractor,
            &ids,
            RunsQuery::All,
            &mut next.strings,
            &mut next.runs,
        )
        .await?;
        requests += n;
        let (models, n) = self.client.registered_models().await?;
        requests += n;
        let (versions, n) = self.client.model_versions(None).await?;
        requests += n;
        next.models = model_records(ex, &mut next.strings, &models);
        next.versions = version_records(ex, &mut next.strings, &versions);
        next.runs.shrink_to_fit();
        let gone = next.runs.carry_from(&self.snapshot.runs);
        self.gone.extend(gone);
        self.full_uncounted = true;
        self.snapshot = next;
        self.experiment_ids = ids;
        self.cursor_ms = Some(now_ms);
        self.last_full_ms = Some(now_ms);
        self.last_models_ms = Some(now_ms);
        self.last_running_ms = Some(now_ms);
        Ok(CycleReport {
            mode: Mode::Full,
            requests,
            runs_read,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Reads what can have changed since the cursor and applies it. Falls back to a full cycle when no
    /// cycle has succeeded yet.
    pub async fn incremental(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        let Some(cursor) = self.cursor_ms else {
            return self.full(now_ms).await;
        };
        let started = Instant::now();
        let since = cursor.saturating_sub(self.overlap_ms);
        let models_due = self
            .last_models_ms
            .is_none_or(|last| now_ms - last >= self.registry_every_ms);
        let running_due = self
            .last_running_ms
            .is_none_or(|last| now_ms - last >= self.running_every_ms);

        // Runs that ended since the cursor, and every run still running: together with the periodic
        // full read this sees each run's start and end (MLflow has no last-update time for runs).
        // Between searches of the running runs (`mlflow.running_interval`), runs started since the
        // cursor instead: new runs are seen as soon, for less of MLflow's time.
        // The requests go out together, `mlflow.concurrency` at a time (MLflow answers each runs
        // search by scanning its runs table; one after another they were most of the cycle), the
        // runs searches over the experiments known at the last cycle.
        let ended = format!("attributes.end_time >= {since}");
        let new_since = format!("attributes.start_time >= {since}");
        let current = if running_due { RUNNING } else { &new_since };
        let filters = [ended.as_str(), current];
        let gate = tokio::sync::Semaphore::new(self.client.concurrency());
        let search = |filter| {
            let known = &self.experiment_ids;
            gated(
                &gate,
                fetch_runs(&self.client, &self.extractor, known, filter),
            )
        };
        let (running, ended_runs, experiments, versions, models) = tokio::try_join!(
            search(filters[1]),
            search(filters[0]),
            gated(&gate, self.client.experiments()),
            gated(&gate, self.client.model_versions(Some(since))),
            gated(&gate, async {
                match models_due {
                    true => self.client.registered_models().await.map(Some),
                    false => Ok(None),
                }
            }),
        )?;
        let (experiments, mut requests) = experiments;
        let snap = &mut self.snapshot;
        let ex = &self.extractor;
        let mut changed: Vec<(RunKey, RunRecord)> = Vec::new();
        let mut runs_read = 0;
        for (n, pages) in [running, ended_runs] {
            requests += n;
            runs_read += merge(pages, &mut snap.strings, &mut changed);
        }
        let (experiment_records, ids) = experiment_records(ex, &mut snap.strings, &experiments);
        // Experiments created since the last cycle: the same two searches over them alone.
        let known: HashSet<&String> = self.experiment_ids.iter().collect();
        let new_ids: Vec<String> = ids
            .iter()
            .filter(|id| !known.contains(id))
            .cloned()
            .collect();
        if !new_ids.is_empty() {
            for filter in filters {
                let (n, pages) = fetch_runs(&self.client, ex, &new_ids, filter).await?;
                requests += n;
                runs_read += merge(pages, &mut snap.strings, &mut changed);
            }
        }
        // Runs we hold as running that neither search returned ended with an end time before the
        // cursor (a client that backdated it): read them by id, when the running runs were searched.
        let seen: HashSet<RunKey> = changed.iter().map(|(k, _)| *k).collect();
        let stale: Vec<String> = match running_due {
            true => snap
                .runs
                .iter()
                .filter(|(k, r)| {
                    r.status == RunStatus::Running && !r.hashed_id && !seen.contains(k)
                })
                .map(|(k, _)| format!("'{}'", run_id(k)))
                .collect(),
            false => Vec::new(),
        };
        for batch in stale.chunks(100) {
            let filter = format!("attributes.run_id IN ({})", batch.join(","));
            let (n, pages) = fetch_runs(&self.client, ex, &ids, &filter).await?;
            requests += n;
            runs_read += merge(pages, &mut snap.strings, &mut changed);
        }
        let (versions, n) = versions;
        requests += n;
        let versions = version_records(ex, &mut snap.strings, &versions);
        let models = models.map(|(list, n)| {
            requests += n;
            model_records(ex, &mut snap.strings, &list)
        });

        // Everything is read: apply.
        snap.experiments = experiment_records;
        self.experiment_ids = ids;
        snap.runs.extend(changed);
        snap.versions.extend(versions);
        if let Some(models) = models {
            snap.models = models;
            let models = &snap.models;
            snap.versions.retain(|(m, _), _| models.contains_key(m));
            self.last_models_ms = Some(now_ms);
        }
        if running_due {
            self.last_running_ms = Some(now_ms);
        }
        self.cursor_ms = Some(now_ms);
        Ok(CycleReport {
            mode: Mode::Incremental,
            requests,
            runs_read,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// `work` once `gate` lets it start.
async fn gated<F: std::future::Future>(gate: &tokio::sync::Semaphore, work: F) -> F::Output {
    // Never closed, so acquiring cannot fail; were it to, the work would just not wait.
    let _turn = gate.acquire().await;
    work.await
}

/// The runs search of the incremental cycle for runs still running.
const RUNNING: &str = "attributes.status = 'RUNNING'";

/// The pages of a filtered runs search, decoded and extracted off this task but not yet merged
/// (searches made at once cannot share the snapshot's strings). Returns (requests, pages).
async fn fetch_runs(
    client: &MlflowClient,
    extractor: &Arc<Extractor>,
    ids: &[String],
    filter: &str,
) -> Result<(usize, Vec<PageRecords>), MlflowError> {
    let ex = extractor.clone();
    let mut pages = Vec::new();
    let requests = client
        .runs(
            ids,
            RunsQuery::Filter(filter),
            move |page| ex.page(&page),
            |page| pages.push(page),
        )
        .await?;
    Ok((requests, pages))
}

/// Merges pages into `out`, renamed to `strings`; returns the runs merged.
fn merge(
    pages: Vec<PageRecords>,
    strings: &mut Interner,
    out: &mut Vec<(RunKey, RunRecord)>,
) -> usize {
    pages.into_iter().map(|p| p.merge_into(strings, out)).sum()
}

/// Runs of a search as records named in `strings`, into `out`: pages are decoded and extracted off
/// this task (see [`MlflowClient::runs`]) and merged here. Returns (requests, runs read).
async fn read_runs(
    client: &MlflowClient,
    extractor: &Arc<Extractor>,
    ids: &[String],
    query: RunsQuery<'_>,
    strings: &mut Interner,
    out: &mut impl Extend<(RunKey, RunRecord)>,
) -> Result<(usize, usize), MlflowError> {
    let ex = extractor.clone();
    let mut read = 0;
    let requests = client
        .runs(
            ids,
            query,
            move |page| ex.page(&page),
            |page| read += page.merge_into(strings, out),
        )
        .await?;
    Ok((requests, read))
}

/// Experiments as records by id, with the ids as MLflow spells them (for runs searches).
fn experiment_records(
    ex: &Extractor,
    strings: &mut Interner,
    experiments: &[Experiment],
) -> (HashMap<Sym, ExperimentRecord>, Vec<String>) {
    let ids = experiments
        .iter()
        .map(|e| e.experiment_id.clone())
        .collect();
    let records = experiments
        .iter()
        .map(|e| ex.experiment(strings, e))
        .collect();
    (records, ids)
}

/// Registered models with their aliases, as records (always all of them: moving an alias changes
/// no timestamp).
fn model_records(
    ex: &Extractor,
    strings: &mut Interner,
    models: &[RegisteredModel],
) -> BTreeMap<Sym, ModelRecord> {
    models.iter().map(|m| ex.model(strings, m)).collect()
}

/// Model versions as records; versions the extractor cannot read are left out.
fn version_records(
    ex: &Extractor,
    strings: &mut Interner,
    versions: &[ModelVersion],
) -> HashMap<(Sym, u32), VersionRecord> {
    versions
        .iter()
        .filter_map(|v| ex.version(strings, v))
        .collect()
}
