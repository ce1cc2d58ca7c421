//! Keeps the [`Snapshot`] in step with MLflow: a full read first and then every
//! `full_resync_interval` (the only way to notice deleted runs), incremental cycles in between that
//! fetch only runs that ended or are still running, new model versions and the experiments, and the
//! registered models every `registry_interval`.
//! A cycle reads everything before it changes anything, so a failed cycle leaves the snapshot as it was.
//! On a workspace-enabled MLflow 3 each workspace is a part of the cycle of its own (a [`Scope`]):
//! one that fails keeps its last good records while the others move on.

pub mod card;
pub mod extract;
mod reads;
pub mod shape;
pub mod snapshot;
mod trace_reads;
pub mod traces;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Settings, WorkspaceSelection};
use crate::error::MlflowError;
use crate::source::mlflow::client::RunsQuery;
use crate::source::mlflow::model::{Experiment, LoggedModelInfo, ModelVersion, RegisteredModel};
use crate::source::mlflow::MlflowClient;
pub use card::{Card, RateCard};
pub use extract::{Extractor, PageRecords};
use reads::*;
pub use snapshot::Snapshot;
use snapshot::{
    run_id, ExperimentRecord, Interner, LoggedModelRecord, LoggedStatus, ModelRecord, RunKey,
    RunRecord, RunStatus, Sym, VersionRecord, NO_TIME,
};
pub use trace_reads::RATED_PER_CYCLE;

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
#[derive(Debug)]
pub struct CycleReport {
    pub mode: Mode,
    /// HTTP requests that returned a page (retries not counted).
    pub requests: usize,
    pub runs_read: usize,
    pub seconds: f64,
    /// The workspaces read (0 on a server without workspaces).
    pub workspaces: usize,
    /// Workspaces whose part of the cycle failed: they keep their last good records.
    pub failed: Vec<(String, MlflowError)>,
    /// Scopes (a workspace, or the whole server: `None`) whose traces could not be read: read
    /// again from the same cursor at the next cycle; the rest of the cycle stands.
    pub traces_failed: Vec<(Option<String>, MlflowError)>,
    /// Traces read (MLflow 3), counted or not.
    pub traces_read: usize,
}

/// One part of a cycle: a workspace of a workspace-enabled MLflow, or the whole server.
struct Scope {
    /// The workspace's name, on a server with workspaces.
    workspace: Option<String>,
    /// Names the workspace on each request.
    client: MlflowClient,
    /// The experiments as MLflow spells their ids, at this scope's last successful read; `None`
    /// until then (a workspace first seen gets a read of its whole part).
    experiment_ids: Option<Vec<String>>,
}

pub struct Syncer {
    /// Names no workspace; each scope has its own.
    client: MlflowClient,
    selection: WorkspaceSelection,
    /// The server said so at the last full cycle (`GET /api/3.0/mlflow/server-info`).
    workspaces_enabled: bool,
    /// The server answered the last full cycle's server-info (an MLflow 2.x does not).
    has_server_info: Option<bool>,
    scopes: Vec<Scope>,
    /// Shared with the threads that decode pages.
    extractor: Arc<Extractor>,
    full_every_ms: i64,
    overlap_ms: i64,
    registry_every_ms: i64,
    running_every_ms: i64,
    logged_every_ms: i64,
    prompts_every_ms: i64,
    snapshot: Snapshot,
    /// `now` of the last successful cycle and of the last successful full one.
    cursor_ms: Option<i64>,
    last_full_ms: Option<i64>,
    /// `now` of the last cycle that read the registered models.
    last_models_ms: Option<i64>,
    /// `now` of the last cycle that searched every running run.
    last_running_ms: Option<i64>,
    /// `now` of the last cycle that read the logged models, and the prompt registry.
    last_logged_ms: Option<i64>,
    last_prompts_ms: Option<i64>,
    /// Runs the last full read no longer found (removed for good, e.g. by `mlflow gc`), with their
    /// last records, until the tally takes them.
    gone: Vec<(RunKey, RunRecord)>,
    /// A full read replaced the snapshot since the tally last counted it.
    full_uncounted: bool,
    /// Read MLflow 3's traces (`mlflow.read_traces`).
    read_traces: bool,
    /// Where each scope's next traces read starts (the tally's cursors, `""` without
    /// workspaces); a scope without one reads every trace there is.
    pub trace_cursors: BTreeMap<Box<str>, i64>,
    /// Where a read for late feedback starts (the tally's [`TraceLedger::feedback_since`]), and
    /// how often one is made (`mlflow.feedback_interval`).
    ///
    /// [`TraceLedger::feedback_since`]: crate::tally::traces::TraceLedger::feedback_since
    pub feedback_since: Option<i64>,
    feedback_every_ms: i64,
    last_feedback_ms: Option<i64>,
    /// Each app's next window of LLM calls (the tally's), how often they are read, and how long
    /// after its end a window is read (`mlflow.traces_overlap`).
    pub llm_cursors: BTreeMap<(Box<str>, Box<str>), i64>,
    /// Traces the rate card waits for (the tally's), by scope; some are read each cycle.
    pub unrated: Vec<(Box<str>, u128)>,
    llm_every_ms: i64,
    last_llm_ms: Option<i64>,
    traces_overlap_ms: i64,
}

impl Syncer {
    /// A syncer with a card of its own (tests and tools; the pipeline shares one card).
    pub fn new(client: MlflowClient, settings: &Settings) -> Syncer {
        Syncer::with_card(client, settings, Card::new(settings))
    }

    /// A syncer that judges runs by `card`, the one the tally and the derivation read them with.
    pub fn with_card(client: MlflowClient, settings: &Settings, card: Arc<Card>) -> Syncer {
        Syncer {
            client,
            selection: settings.mlflow.workspaces.clone(),
            workspaces_enabled: false,
            has_server_info: None,
            scopes: Vec::new(),
            extractor: Arc::new(Extractor::new(settings, card)),
            full_every_ms: settings.mlflow.full_resync_interval.as_millis() as i64,
            overlap_ms: settings.mlflow.sync_overlap.as_millis() as i64,
            registry_every_ms: settings.mlflow.registry_interval.as_millis() as i64,
            running_every_ms: settings.mlflow.running_interval.as_millis() as i64,
            logged_every_ms: settings.mlflow.logged_models_interval.as_millis() as i64,
            prompts_every_ms: settings.mlflow.prompts_interval.as_millis() as i64,
            snapshot: Snapshot::default(),
            cursor_ms: None,
            last_full_ms: None,
            last_models_ms: None,
            last_running_ms: None,
            last_logged_ms: None,
            last_prompts_ms: None,
            gone: Vec::new(),
            full_uncounted: false,
            read_traces: settings.mlflow.read_traces,
            trace_cursors: BTreeMap::new(),
            feedback_since: None,
            feedback_every_ms: settings.mlflow.feedback_interval.as_millis() as i64,
            last_feedback_ms: None,
            llm_cursors: BTreeMap::new(),
            unrated: Vec::new(),
            llm_every_ms: settings.mlflow.llm_calls_interval.as_millis() as i64,
            last_llm_ms: None,
            traces_overlap_ms: settings.mlflow.traces_overlap.as_millis() as i64,
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

    /// The rate card and feature table runs are judged by.
    pub fn card(&self) -> &Arc<Card> {
        &self.extractor.card
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

    /// True when the server is an MLflow 3 (it answered server-info at the last full cycle).
    pub fn is_mlflow3(&self) -> bool {
        self.has_server_info == Some(true)
    }

    /// True when the server has workspaces (as of the last full cycle).
    pub fn workspaces_enabled(&self) -> bool {
        self.workspaces_enabled
    }

    /// The workspaces the last cycle read, by name (none on a server without workspaces).
    pub fn workspaces(&self) -> Vec<&str> {
        self.scopes
            .iter()
            .filter_map(|s| s.workspace.as_deref())
            .collect()
    }

    /// Asks the server what it supports (at a full cycle) and which workspaces it has (every
    /// cycle, when it has them), and sets the scopes of this cycle: the workspaces
    /// `mlflow.workspaces` selects, or the whole server. Returns the requests made.
    async fn refresh_scopes(&mut self, full: bool) -> Result<usize, MlflowError> {
        let mut requests = 0;
        if full || self.has_server_info.is_none() {
            let info = self.client.server_info().await?;
            // An older server's 404 returned no page.
            requests += usize::from(info.is_some());
            let enabled = info.as_ref().is_some_and(|i| i.workspaces_enabled);
            if self.has_server_info != Some(info.is_some()) && info.is_none() {
                tracing::info!(
                    "MLflow has no /api/3.0/mlflow/server-info (an MLflow before 3): reading it without workspaces"
                );
            }
            if enabled != self.workspaces_enabled || self.has_server_info.is_none() {
                tracing::info!(
                    workspaces_enabled = enabled,
                    "MLflow's workspaces: each is read with the X-MLFLOW-WORKSPACE header when enabled"
                );
            }
            self.has_server_info = Some(info.is_some());
            self.workspaces_enabled = enabled;
        }
        if !self.workspaces_enabled {
            if self.scopes.len() != 1 || self.scopes[0].workspace.is_some() {
                self.scopes = vec![Scope {
                    workspace: None,
                    client: self.client.clone(),
                    experiment_ids: None,
                }];
            }
            return Ok(requests);
        }
        let listed = self.client.workspaces().await?;
        requests += 1;
        let mut old = std::mem::take(&mut self.scopes);
        for name in listed.into_iter().filter(|n| self.selection.selects(n)) {
            let scope = match old
                .iter()
                .position(|s| s.workspace.as_deref() == Some(&name))
            {
                Some(i) => old.swap_remove(i),
                None => Scope {
                    client: self.client.in_workspace(&name),
                    workspace: Some(name),
                    experiment_ids: None,
                },
            };
            self.scopes.push(scope);
        }
        Ok(requests)
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

    /// Reads everything and replaces the snapshot. A workspace whose part fails keeps its last
    /// good records; on a server without workspaces the cycle fails as a whole.
    pub async fn full(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        let started = Instant::now();
        let mut requests = self.refresh_scopes(true).await?;
        let mlflow3 = self.has_server_info == Some(true);
        let mut next = Snapshot::default();
        let mut runs_read = 0;
        let mut failed = Vec::new();
        for i in 0..self.scopes.len() {
            let scope = &self.scopes[i];
            let workspace = scope.workspace.clone();
            let mut read_here = HashSet::new();
            let result = read_part(
                &scope.client,
                &self.extractor,
                workspace.as_deref(),
                mlflow3,
                &mut next,
                &mut read_here,
            )
            .await;
            match (result, workspace) {
                (Ok(part), _) => {
                    requests += part.requests;
                    runs_read += part.runs_read;
                    self.scopes[i].experiment_ids = Some(part.ids);
                }
                (Err(e), Some(w)) => {
                    // What was read of it goes; what it had at the last good cycle stays.
                    next.runs.retain(|_, r| !read_here.contains(&r.experiment));
                    carry_workspace(&self.snapshot, &w, &mut next);
                    failed.push((w, e));
                }
                (Err(e), None) => return Err(e),
            }
        }
        next.runs.shrink_to_fit();
        let traces = self.read_traces(mlflow3, &failed, now_ms).await;
        requests += traces.requests;
        next.traces = std::mem::take(&mut self.snapshot.traces);
        next.traces.extend(traces.batches);
        next.llm_calls = std::mem::take(&mut self.snapshot.llm_calls);
        next.llm_calls.extend(traces.llm);
        next.rated = std::mem::take(&mut self.snapshot.rated);
        next.rated.extend(traces.rated);
        let gone = next.runs.carry_from(&self.snapshot.runs);
        self.gone.extend(gone);
        // Only a read of every part says what is gone: a workspace that failed here may hold
        // runs and objects the tally counted that no snapshot carried over (at the first full
        // read after a start), and they are not gone.
        self.full_uncounted = failed.is_empty();
        self.snapshot = next;
        self.cursor_ms = Some(now_ms);
        self.last_full_ms = Some(now_ms);
        self.last_models_ms = Some(now_ms);
        self.last_running_ms = Some(now_ms);
        self.last_logged_ms = Some(now_ms);
        self.last_prompts_ms = Some(now_ms);
        Ok(CycleReport {
            mode: Mode::Full,
            requests,
            runs_read,
            seconds: started.elapsed().as_secs_f64(),
            workspaces: self.workspaces().len(),
            failed,
            traces_failed: traces.failed,
            traces_read: traces.read,
        })
    }

    /// Reads what can have changed since the cursor and applies it, one scope at a time (each is
    /// read whole before it changes anything). Falls back to a full cycle when no cycle has
    /// succeeded yet; a workspace first seen gets a read of its whole part.
    pub async fn incremental(&mut self, now_ms: i64) -> Result<CycleReport, MlflowError> {
        let Some(cursor) = self.cursor_ms else {
            return self.full(now_ms).await;
        };
        let started = Instant::now();
        let mut requests = self.refresh_scopes(false).await?;
        let since = cursor.saturating_sub(self.overlap_ms);
        // Each read of its own interval: due when it never ran or its interval has passed.
        let due_after = |last: Option<i64>, every: i64| last.is_none_or(|l| now_ms - l >= every);
        let mlflow3 = self.is_mlflow3();
        let models_due = due_after(self.last_models_ms, self.registry_every_ms);
        let running_due = due_after(self.last_running_ms, self.running_every_ms);
        let logged_due = mlflow3 && due_after(self.last_logged_ms, self.logged_every_ms);
        let prompts_due = mlflow3 && due_after(self.last_prompts_ms, self.prompts_every_ms);
        let due = Due {
            since,
            models: models_due,
            running: running_due,
            logged: logged_due,
            prompts: prompts_due,
        };
        let mut runs_read = 0;
        let mut failed = Vec::new();
        for i in 0..self.scopes.len() {
            let result = match self.scopes[i].experiment_ids.take() {
                Some(ids) => {
                    let r = self.changes(&self.scopes[i], &ids, &due).await;
                    self.scopes[i].experiment_ids = Some(ids);
                    r.map(|c| self.apply(i, c))
                }
                None => self.first_read(i).await,
            };
            match (result, self.scopes[i].workspace.clone()) {
                (Ok((n, read)), _) => {
                    requests += n;
                    runs_read += read;
                }
                (Err(e), Some(w)) => failed.push((w, e)),
                (Err(e), None) => return Err(e),
            }
        }
        if models_due {
            self.last_models_ms = Some(now_ms);
        }
        if running_due {
            self.last_running_ms = Some(now_ms);
        }
        if logged_due {
            self.last_logged_ms = Some(now_ms);
        }
        if prompts_due {
            self.last_prompts_ms = Some(now_ms);
        }
        let traces = self.read_traces(mlflow3, &failed, now_ms).await;
        requests += traces.requests;
        self.snapshot.traces.extend(traces.batches);
        self.snapshot.llm_calls.extend(traces.llm);
        self.snapshot.rated.extend(traces.rated);
        self.cursor_ms = Some(now_ms);
        Ok(CycleReport {
            mode: Mode::Incremental,
            requests,
            runs_read,
            seconds: started.elapsed().as_secs_f64(),
            workspaces: self.workspaces().len(),
            failed,
            traces_failed: traces.failed,
            traces_read: traces.read,
        })
    }
}
