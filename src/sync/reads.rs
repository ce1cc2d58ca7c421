//! The Syncer's reads of MLflow's objects: a scope read whole the first time (into a part of its
//! own, added only when every read succeeded) and the changes an incremental cycle reads, then
//! applied in one step; and the records each read becomes.

use super::*;

impl Syncer {
    /// The whole part of a workspace first seen since the last full cycle, read and then added.
    /// Returns (requests, runs read).
    pub(super) async fn first_read(&mut self, i: usize) -> Result<(usize, usize), MlflowError> {
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
    pub(super) async fn changes(
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
    pub(super) fn apply(&mut self, i: usize, c: Changes) -> (usize, usize) {
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

/// What an incremental cycle reads of each scope.
pub(super) struct Due {
    /// The cursor less the overlap.
    pub(super) since: i64,
    /// The registered models are read (`mlflow.registry_interval`).
    pub(super) models: bool,
    /// Every running run is searched (`mlflow.running_interval`).
    pub(super) running: bool,
    /// The logged models are read (`mlflow.logged_models_interval`, MLflow 3 only).
    pub(super) logged: bool,
    /// The prompt registry is read (`mlflow.prompts_interval`, MLflow 3 only).
    pub(super) prompts: bool,
}

/// What changed in one scope since the cursor, named in `strings` (the snapshot's table and what
/// the read added to it).
pub(super) struct Changes {
    pub(super) strings: Interner,
    pub(super) experiments: HashMap<Sym, ExperimentRecord>,
    pub(super) ids: Vec<String>,
    pub(super) runs: Vec<(RunKey, RunRecord)>,
    pub(super) versions: HashMap<(Sym, u32), VersionRecord>,
    pub(super) models: Option<BTreeMap<Sym, ModelRecord>>,
    pub(super) logged_models: Option<HashMap<Box<str>, LoggedModelRecord>>,
    pub(super) prompts: Option<Prompts>,
    pub(super) requests: usize,
    pub(super) runs_read: usize,
}

/// A scope's prompts by name and their versions.
type Prompts = (
    BTreeMap<Sym, ModelRecord>,
    HashMap<(Sym, u32), VersionRecord>,
);

/// What [`read_part`] read.
pub(super) struct Part {
    pub(super) ids: Vec<String>,
    pub(super) requests: usize,
    pub(super) runs_read: usize,
}

/// Reads the whole of one scope into `next`: its runs as they come (the experiments they belong
/// to are put in `read_here`, so that a failure can take them out again), its experiments, models
/// and versions once everything is read.
pub(super) async fn read_part(
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
pub(super) fn carry_workspace(old: &Snapshot, w: &str, next: &mut Snapshot) {
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
pub(super) async fn gated<F: std::future::Future>(
    gate: &tokio::sync::Semaphore,
    work: F,
) -> F::Output {
    // Never closed, so acquiring cannot fail; were it to, the work would just not wait.
    let _turn = gate.acquire().await;
    work.await
}

/// The runs search of the incremental cycle for runs still running.
const RUNNING: &str = "attributes.status = 'RUNNING'";

/// The pages of a filtered runs search, decoded and extracted off this task but not yet merged
/// (searches made at once cannot share the snapshot's strings). Returns (requests, pages).
pub(super) async fn fetch_runs(
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
pub(super) fn merge(
    pages: Vec<PageRecords>,
    strings: &mut Interner,
    out: &mut Vec<(RunKey, RunRecord)>,
) -> usize {
    pages.into_iter().map(|p| p.merge_into(strings, out)).sum()
}

/// Runs of a search as records named in `strings`, into `out`: pages are decoded and extracted off
/// this task (see [`MlflowClient::runs`]) and merged here. Returns (requests, runs read).
pub(super) async fn read_runs(
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
pub(super) async fn logged_models(
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
pub(super) async fn read_prompts(
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
pub(super) fn logged_records(
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
pub(super) fn scoped(strings: &mut Interner, workspace: Option<&str>, name: Sym) -> Sym {
    match workspace {
        None => name,
        Some(w) => {
            let qualified = format!("{w}/{}", strings.get(name));
            strings.intern(&qualified)
        }
    }
}

/// Experiments as records by id, with the ids as MLflow spells them (for runs searches).
pub(super) fn experiment_records(
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
pub(super) fn model_records(
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
pub(super) fn version_records(
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
