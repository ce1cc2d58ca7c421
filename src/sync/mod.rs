//! Keeps the [`Snapshot`] in step with MLflow: a full read first and then every
//! `full_resync_interval` (the only way to notice deleted runs), incremental cycles in between that
//! fetch only runs that ended or are still running, new model versions and the experiments, and the
//! registered models every `registry_interval`.
//! A cycle reads everything before it changes anything, so a failed cycle leaves the snapshot as it was.
//! On a workspace-enabled MLflow 3 each workspace is a part of the cycle of its own (a [`Scope`]):
//! one that fails keeps its last good records while the others move on.

pub mod card;
pub mod extract;
pub mod shape;
pub mod snapshot;
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
pub use snapshot::Snapshot;
use snapshot::{
    run_id, ExperimentRecord, Interner, LoggedModelRecord, LoggedStatus, ModelRecord, RunKey,
    RunRecord, RunStatus, Sym, VersionRecord, NO_TIME,
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
    pub fn new(client: MlflowClient, settings: &Settings) -> Syncer {
        Syncer {
            client,
            selection: settings.mlflow.workspaces.clone(),
            workspaces_enabled: false,
            has_server_info: None,
            scopes: Vec::new(),
            extractor: Arc::new(Extractor::new(settings, Card::new(settings))),
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

    /// Reads the traces that started at or after each scope's cursor, on an MLflow 3 with
    /// `mlflow.read_traces`, but of the workspaces whose part of this cycle `failed`. A scope
    /// whose read fails gives nothing this cycle: its cursor stays, so the next reads it again.
    async fn read_traces(
        &mut self,
        mlflow3: bool,
        failed: &[(String, MlflowError)],
        now_ms: i64,
    ) -> TracesRead {
        let mut out = TracesRead::default();
        if !(mlflow3 && self.read_traces) {
            return out;
        }
        // Every `mlflow.feedback_interval`, each read looks back over the feedback window too.
        let look_back = self.feedback_since.filter(|_| {
            self.last_feedback_ms
                .is_none_or(|last| now_ms - last >= self.feedback_every_ms)
        });
        if look_back.is_some() {
            self.last_feedback_ms = Some(now_ms);
        }
        for scope in &self.scopes {
            let Some(ids) = scope
                .experiment_ids
                .as_ref()
                .filter(|_| !failed_here(scope, failed, &out))
            else {
                continue;
            };
            let since = self
                .trace_cursors
                .get(scope.workspace.as_deref().unwrap_or(""))
                .copied()
                .map(|c| look_back.map_or(c, |b| b.min(c)));
            let mut batch = traces::TraceBatch {
                workspace: scope.workspace.clone(),
                ..Default::default()
            };
            match scope
                .client
                .traces(ids, since, |page| batch.add(page))
                .await
            {
                Ok(n) => {
                    out.requests += n;
                    out.read += batch.len();
                    out.batches.push(batch);
                }
                Err(e) => out.failed.push((scope.workspace.clone(), e)),
            }
        }
        if self
            .last_llm_ms
            .is_none_or(|last| now_ms - last >= self.llm_every_ms)
        {
            self.last_llm_ms = Some(now_ms);
            self.read_llm_calls(failed, now_ms, &mut out).await;
        }
        self.read_rated(failed, &mut out).await;
        out
    }

    /// Reads whole the traces the rate card waits for, [`RATED_PER_REQUEST`] to a request and
    /// at most [`RATED_PER_CYCLE`] a scope each cycle: their LLM calls MLflow did not price.
    async fn read_rated(&self, failed: &[(String, MlflowError)], out: &mut TracesRead) {
        for scope in &self.scopes {
            if failed_here(scope, failed, out) {
                continue;
            }
            let key = scope.workspace.as_deref().unwrap_or("");
            let ids: Vec<u128> = self
                .unrated
                .iter()
                .filter(|(s, _)| &**s == key)
                .map(|(_, id)| *id)
                .take(RATED_PER_CYCLE)
                .collect();
            for chunk in ids.chunks(RATED_PER_REQUEST) {
                let names: Vec<String> = chunk.iter().map(|id| format!("tr-{id:032x}")).collect();
                match scope.client.span_calls(&names).await {
                    Ok(found) => {
                        out.requests += 1;
                        let mut batch = traces::RatedBatch {
                            workspace: scope.workspace.clone(),
                            asked: chunk.to_vec(),
                            calls: Vec::new(),
                        };
                        for (id, calls) in found {
                            let id = traces::trace_id(&id);
                            let unpriced = calls.into_iter().filter(|c| !c.priced);
                            batch.calls.extend(unpriced.map(|c| (id, c)));
                        }
                        out.rated.push(batch);
                    }
                    Err(e) => {
                        out.failed.push((scope.workspace.clone(), e));
                        break;
                    }
                }
            }
        }
    }

    /// Reads each app's LLM calls by model over its window since the last read, up to
    /// `mlflow.traces_overlap` ago; an app whose read fails is read from the same point next time.
    async fn read_llm_calls(
        &self,
        failed: &[(String, MlflowError)],
        now_ms: i64,
        out: &mut TracesRead,
    ) {
        let to_ms = now_ms - self.traces_overlap_ms - 1;
        for scope in &self.scopes {
            if failed_here(scope, failed, out) {
                continue;
            }
            let key = scope.workspace.as_deref().unwrap_or("");
            let apps = self.llm_cursors.iter().filter(|((s, _), _)| &**s == key);
            for ((_, experiment), cursor) in apps {
                let from = (*cursor != crate::tally::traces::NEVER).then_some(*cursor);
                if from.is_some_and(|f| f > to_ms) {
                    continue;
                }
                match scope.client.llm_calls(experiment, from, to_ms).await {
                    Ok((calls, n)) => {
                        out.requests += n;
                        out.llm.push(traces::LlmBatch {
                            workspace: scope.workspace.clone(),
                            experiment_id: experiment.to_string(),
                            from_ms: *cursor,
                            next_ms: to_ms + 1,
                            calls,
                        });
                    }
                    Err(e) => {
                        out.failed.push((scope.workspace.clone(), e));
                        break;
                    }
                }
            }
        }
    }

    /// The whole part of a workspace first seen since the last full cycle, read and then added.
    /// Returns (requests, runs read).
    async fn first_read(&mut self, i: usize) -> Result<(usize, usize), MlflowError> {
        let scope = &self.scopes[i];
        // Read into a snapshot of its own, so that a failure leaves nothing behind.
        let mut part = Snapshot::default();
        let read = read_part(
            &scope.client,
            &self.extractor,
            scope.workspace.as_deref(),
            self.has_server_info == Some(true),
            &mut part,
            &mut HashSet::new(),
        )
        .await?;
        let snap = &mut self.snapshot;
        let remap = snap.strings.absorb(&part.strings);
        for (id, mut e) in part.experiments {
            remap.experiment(&mut e);
            snap.experiments.insert(remap.sym(id), e);
        }
        for (k, mut r) in part.runs.iter().map(|(k, r)| (k, r.clone())) {
            remap.run(&mut r);
            snap.runs.insert(k, r);
        }
        for (m, mut rec) in part.models {
            remap.model(&mut rec);
            snap.models.insert(remap.sym(m), rec);
        }
        for ((m, n), mut v) in part.versions {
            remap.version(&mut v);
            snap.versions.insert((remap.sym(m), n), v);
        }
        for (id, mut l) in part.logged_models {
            l.experiment = remap.sym(l.experiment);
            snap.logged_models.insert(id, l);
        }
        for (p, mut rec) in part.prompts {
            remap.model(&mut rec);
            snap.prompts.insert(remap.sym(p), rec);
        }
        for ((p, n), mut v) in part.prompt_versions {
            remap.version(&mut v);
            snap.prompt_versions.insert((remap.sym(p), n), v);
        }
        self.scopes[i].experiment_ids = Some(read.ids);
        Ok((read.requests, read.runs_read))
    }

    /// What can have changed in one scope since the cursor, read but not applied.
    async fn changes(
        &self,
        scope: &Scope,
        known_ids: &[String],
        due: &Due,
    ) -> Result<Changes, MlflowError> {
        let client = &scope.client;
        let ex = &self.extractor;
        let workspace = scope.workspace.as_deref();
        // Runs that ended since the cursor, and every run still running: together with the periodic
        // full read this sees each run's start and end (MLflow has no last-update time for runs).
        // Between searches of the running runs (`mlflow.running_interval`), runs started since the
        // cursor instead: new runs are seen as soon, for less of MLflow's time.
        // The requests go out together, `mlflow.concurrency` at a time (MLflow answers each runs
        // search by scanning its runs table; one after another they were most of the cycle), the
        // runs searches over the experiments known at the last cycle.
        let ended = format!("attributes.end_time >= {}", due.since);
        let new_since = format!("attributes.start_time >= {}", due.since);
        let current = if due.running { RUNNING } else { &new_since };
        let filters = [ended.as_str(), current];
        let gate = tokio::sync::Semaphore::new(client.concurrency());
        let search = |filter| gated(&gate, fetch_runs(client, ex, known_ids, filter));
        let (running, ended_runs, experiments, versions, models) = tokio::try_join!(
            search(filters[1]),
            search(filters[0]),
            gated(&gate, client.experiments()),
            gated(&gate, client.model_versions(Some(due.since))),
            gated(&gate, async {
                match due.models {
                    true => client.registered_models().await.map(Some),
                    false => Ok(None),
                }
            }),
        )?;
        let (experiments, mut requests) = experiments;
        // Names are interned into a table of this read's own, renamed into the snapshot's when
        // applied: the snapshot is not touched until then.
        let mut strings = self.snapshot.strings.clone();
        let mut runs: Vec<(RunKey, RunRecord)> = Vec::new();
        let mut runs_read = 0;
        for (n, pages) in [running, ended_runs] {
            requests += n;
            runs_read += merge(pages, &mut strings, &mut runs);
        }
        let (experiment_records, ids) =
            experiment_records(ex, &mut strings, &experiments, workspace);
        // Experiments created since the last cycle: the same two searches over them alone.
        let known: HashSet<&String> = known_ids.iter().collect();
        let new_ids: Vec<String> = ids
            .iter()
            .filter(|id| !known.contains(id))
            .cloned()
            .collect();
        if !new_ids.is_empty() {
            for filter in filters {
                let (n, pages) = fetch_runs(client, ex, &new_ids, filter).await?;
                requests += n;
                runs_read += merge(pages, &mut strings, &mut runs);
            }
        }
        // Runs of this scope we hold as running that neither search returned ended with an end time
        // before the cursor (a client that backdated it): read them by id, when the running runs
        // were searched.
        let seen: HashSet<RunKey> = runs.iter().map(|(k, _)| *k).collect();
        let stale: Vec<String> = match due.running {
            true => self
                .snapshot
                .runs
                .iter()
                .filter(|(k, r)| {
                    r.status == RunStatus::Running
                        && !r.hashed_id
                        && !seen.contains(k)
                        && experiment_records.contains_key(&r.experiment)
                })
                .map(|(k, _)| format!("'{}'", run_id(k)))
                .collect(),
            false => Vec::new(),
        };
        for batch in stale.chunks(100) {
            let filter = format!("attributes.run_id IN ({})", batch.join(","));
            let (n, pages) = fetch_runs(client, ex, &ids, &filter).await?;
            requests += n;
            runs_read += merge(pages, &mut strings, &mut runs);
        }
        let (versions, n) = versions;
        requests += n;
        let versions = version_records(ex, &mut strings, &versions, workspace);
        let models = models.map(|(list, n)| {
            requests += n;
            model_records(ex, &mut strings, &list, workspace)
        });
        let logged_models = match due.logged {
            true => {
                let (list, n) = logged_models(client, &ids).await?;
                requests += n;
                Some(logged_records(&mut strings, list))
            }
            false => None,
        };
        let prompts = match due.prompts {
            true => {
                let (p, n) = read_prompts(client, ex, &mut strings, workspace).await?;
                requests += n;
                Some(p)
            }
            false => None,
        };
        Ok(Changes {
            logged_models,
            prompts,
            strings,
            experiments: experiment_records,
            ids,
            runs,
            versions,
            models,
            requests,
            runs_read,
        })
    }

    /// Applies what [`Syncer::changes`] read of scope `i`: its experiments and (when read) its
    /// models replace the scope's, runs and versions are added. Returns (requests, runs read).
    fn apply(&mut self, i: usize, c: Changes) -> (usize, usize) {
        let snap = &mut self.snapshot;
        // The read's table began as a copy of the snapshot's: its symbols are the snapshot's.
        snap.strings = c.strings;
        let workspace = self.scopes[i]
            .workspace
            .as_deref()
            .and_then(|w| snap.strings.lookup(w));
        if let Some((prompts, versions)) = c.prompts {
            snap.prompts.retain(|_, p| p.workspace != workspace);
            snap.prompts.extend(prompts);
            let prompts = &snap.prompts;
            snap.prompt_versions
                .retain(|(p, _), _| prompts.contains_key(p));
            snap.prompt_versions.extend(versions);
        }
        if let Some(logged) = c.logged_models {
            let experiments = &snap.experiments;
            snap.logged_models.retain(|_, l| {
                experiments
                    .get(&l.experiment)
                    .is_some_and(|e| e.workspace != workspace)
            });
            snap.logged_models.extend(logged);
        }
        snap.experiments.retain(|_, e| e.workspace != workspace);
        snap.experiments.extend(c.experiments);
        self.scopes[i].experiment_ids = Some(c.ids);
        snap.runs.extend(c.runs);
        snap.versions.extend(c.versions);
        if let Some(models) = c.models {
            snap.models.retain(|_, m| m.workspace != workspace);
            snap.models.extend(models);
            let models = &snap.models;
            snap.versions.retain(|(m, _), _| models.contains_key(m));
        }
        (c.requests, c.runs_read)
    }
}

/// Whether this cycle's reads of `scope` failed already (its workspace's part, or a traces read):
/// the reads after them skip it, and the next cycle reads it again from the same points.
fn failed_here(scope: &Scope, failed: &[(String, MlflowError)], out: &TracesRead) -> bool {
    let w = scope.workspace.as_deref();
    failed.iter().any(|(f, _)| Some(f.as_str()) == w)
        || out.failed.iter().any(|(f, _)| f.as_deref() == w)
}

/// Traces read whole for the rate card: a request's, and a scope's each cycle (a backlog drains
/// over cycles instead of stalling one).
const RATED_PER_REQUEST: usize = 100;
pub const RATED_PER_CYCLE: usize = 500;

/// What one cycle's reads of traces gave.
#[derive(Default)]
struct TracesRead {
    batches: Vec<traces::TraceBatch>,
    llm: Vec<traces::LlmBatch>,
    rated: Vec<traces::RatedBatch>,
    requests: usize,
    read: usize,
    failed: Vec<(Option<String>, MlflowError)>,
}

/// What an incremental cycle reads of each scope.
struct Due {
    /// The cursor less the overlap.
    since: i64,
    /// The registered models are read (`mlflow.registry_interval`).
    models: bool,
    /// Every running run is searched (`mlflow.running_interval`).
    running: bool,
    /// The logged models are read (`mlflow.logged_models_interval`, MLflow 3 only).
    logged: bool,
    /// The prompt registry is read (`mlflow.prompts_interval`, MLflow 3 only).
    prompts: bool,
}

/// What changed in one scope since the cursor, named in `strings` (the snapshot's table and what
/// the read added to it).
struct Changes {
    strings: Interner,
    experiments: HashMap<Sym, ExperimentRecord>,
    ids: Vec<String>,
    runs: Vec<(RunKey, RunRecord)>,
    versions: HashMap<(Sym, u32), VersionRecord>,
    models: Option<BTreeMap<Sym, ModelRecord>>,
    logged_models: Option<HashMap<Box<str>, LoggedModelRecord>>,
    prompts: Option<Prompts>,
    requests: usize,
    runs_read: usize,
}

/// A scope's prompts by name and their versions.
type Prompts = (
    BTreeMap<Sym, ModelRecord>,
    HashMap<(Sym, u32), VersionRecord>,
);

/// What [`read_part`] read.
struct Part {
    ids: Vec<String>,
    requests: usize,
    runs_read: usize,
}

/// Reads the whole of one scope into `next`: its runs as they come (the experiments they belong
/// to are put in `read_here`, so that a failure can take them out again), its experiments, models
/// and versions once everything is read.
async fn read_part(
    client: &MlflowClient,
    ex: &Arc<Extractor>,
    workspace: Option<&str>,
    mlflow3: bool,
    next: &mut Snapshot,
    read_here: &mut HashSet<Sym>,
) -> Result<Part, MlflowError> {
    let (experiments, mut requests) = client.experiments().await?;
    let (records, ids) = experiment_records(ex, &mut next.strings, &experiments, workspace);
    read_here.extend(records.keys().copied());
    let (n, runs_read) = read_runs(
        client,
        ex,
        &ids,
        RunsQuery::All,
        &mut next.strings,
        &mut next.runs,
    )
    .await?;
    requests += n;
    let (models, n) = client.registered_models().await?;
    requests += n;
    let (versions, n) = client.model_versions(None).await?;
    requests += n;
    let mut prompts = None;
    if mlflow3 {
        let (list, n) = logged_models(client, &ids).await?;
        requests += n;
        let logged = logged_records(&mut next.strings, list);
        next.logged_models.extend(logged);
        let (p, n) = read_prompts(client, ex, &mut next.strings, workspace).await?;
        requests += n;
        prompts = Some(p);
    }
    if let Some((p, v)) = prompts {
        next.prompts.extend(p);
        next.prompt_versions.extend(v);
    }
    next.experiments.extend(records);
    next.models
        .extend(model_records(ex, &mut next.strings, &models, workspace));
    next.versions
        .extend(version_records(ex, &mut next.strings, &versions, workspace));
    Ok(Part {
        ids,
        requests,
        runs_read,
    })
}

/// Copies what workspace `w` had in `old` (its experiments, their runs, its models and their
/// versions) into `next`, renamed to `next`'s strings: its part of this cycle failed.
fn carry_workspace(old: &Snapshot, w: &str, next: &mut Snapshot) {
    let Some(ws) = old.strings.lookup(w) else {
        return;
    };
    let remap = next.strings.absorb(&old.strings);
    let mut experiments = HashSet::new();
    for (id, e) in old
        .experiments
        .iter()
        .filter(|(_, e)| e.workspace == Some(ws))
    {
        let mut e = e.clone();
        remap.experiment(&mut e);
        experiments.insert(*id);
        next.experiments.insert(remap.sym(*id), e);
    }
    for (k, r) in old
        .runs
        .iter()
        .filter(|(_, r)| experiments.contains(&r.experiment))
    {
        let mut r = r.clone();
        remap.run(&mut r);
        next.runs.insert(k, r);
    }
    for (m, rec) in old.models.iter().filter(|(_, m)| m.workspace == Some(ws)) {
        let mut rec = rec.clone();
        remap.model(&mut rec);
        next.models.insert(remap.sym(*m), rec);
    }
    for (id, l) in old.logged_models.iter() {
        if experiments.contains(&l.experiment) {
            let mut l = l.clone();
            l.experiment = remap.sym(l.experiment);
            next.logged_models.insert(id.clone(), l);
        }
    }
    for (p, rec) in old.prompts.iter().filter(|(_, p)| p.workspace == Some(ws)) {
        let mut rec = rec.clone();
        remap.model(&mut rec);
        next.prompts.insert(remap.sym(*p), rec);
    }
    for ((p, n), v) in &old.prompt_versions {
        if old
            .prompts
            .get(p)
            .is_some_and(|rec| rec.workspace == Some(ws))
        {
            let mut v = v.clone();
            remap.version(&mut v);
            next.prompt_versions.insert((remap.sym(*p), *n), v);
        }
    }
    for ((m, n), v) in &old.versions {
        if old
            .models
            .get(m)
            .is_some_and(|rec| rec.workspace == Some(ws))
        {
            let mut v = v.clone();
            remap.version(&mut v);
            next.versions.insert((remap.sym(*m), *n), v);
        }
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

/// The logged models of these experiments; none from a server without the endpoint (an MLflow 3
/// before logged models answers 404).
async fn logged_models(
    client: &MlflowClient,
    ids: &[String],
) -> Result<(Vec<LoggedModelInfo>, usize), MlflowError> {
    match client.logged_models(ids).await {
        Err(MlflowError::Status { status: 404, .. }) => Ok((Vec::new(), 0)),
        other => other,
    }
}

/// The prompt registry of a scope (MLflow 3): prompts with their aliases, and their versions,
/// named as models are. An MLflow 3 before the prompt registry has none.
async fn read_prompts(
    client: &MlflowClient,
    ex: &Extractor,
    strings: &mut Interner,
    workspace: Option<&str>,
) -> Result<(Prompts, usize), MlflowError> {
    let (prompts, n) = client.prompts().await?;
    let (versions, m) = client.prompt_versions().await?;
    let prompts = model_records(ex, strings, &prompts, workspace);
    let versions = version_records(ex, strings, &versions, workspace);
    Ok(((prompts, versions), n + m))
}

/// Logged models as records by id.
fn logged_records(
    strings: &mut Interner,
    list: Vec<LoggedModelInfo>,
) -> HashMap<Box<str>, LoggedModelRecord> {
    list.into_iter()
        .map(|m| {
            let record = LoggedModelRecord {
                experiment: strings.intern(&m.experiment_id),
                name: strings.intern(&m.name),
                status: LoggedStatus::parse(&m.status),
                created_ms: m.creation_timestamp_ms.unwrap_or(NO_TIME),
            };
            (m.model_id.into_boxed_str(), record)
        })
        .collect()
}

/// The name of `name` in `workspace`: `workspace/name`, as records of a workspace are named
/// (names are unique only inside a workspace; workspace names hold no `/`).
fn scoped(strings: &mut Interner, workspace: Option<&str>, name: Sym) -> Sym {
    match workspace {
        None => name,
        Some(w) => {
            let qualified = format!("{w}/{}", strings.get(name));
            strings.intern(&qualified)
        }
    }
}

/// Experiments as records by id, with the ids as MLflow spells them (for runs searches).
fn experiment_records(
    ex: &Extractor,
    strings: &mut Interner,
    experiments: &[Experiment],
    workspace: Option<&str>,
) -> (HashMap<Sym, ExperimentRecord>, Vec<String>) {
    let ids = experiments
        .iter()
        .map(|e| e.experiment_id.clone())
        .collect();
    let ws = workspace.map(|w| strings.intern(w));
    let records = experiments
        .iter()
        .map(|e| {
            let (id, mut rec) = ex.experiment(strings, e);
            rec.name = scoped(strings, workspace, rec.name);
            rec.workspace = ws;
            (id, rec)
        })
        .collect();
    (records, ids)
}

/// Registered models with their aliases, as records (always all of them: moving an alias changes
/// no timestamp).
fn model_records(
    ex: &Extractor,
    strings: &mut Interner,
    models: &[RegisteredModel],
    workspace: Option<&str>,
) -> BTreeMap<Sym, ModelRecord> {
    let ws = workspace.map(|w| strings.intern(w));
    models
        .iter()
        .map(|m| {
            let (name, mut rec) = ex.model(strings, m);
            rec.workspace = ws;
            (scoped(strings, workspace, name), rec)
        })
        .collect()
}

/// Model versions as records; versions the extractor cannot read are left out.
fn version_records(
    ex: &Extractor,
    strings: &mut Interner,
    versions: &[ModelVersion],
    workspace: Option<&str>,
) -> HashMap<(Sym, u32), VersionRecord> {
    versions
        .iter()
        .filter_map(|v| {
            let ((name, n), rec) = ex.version(strings, v)?;
            Some(((scoped(strings, workspace, name), n), rec))
        })
        .collect()
}
