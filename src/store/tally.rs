//! The tally in the event store: what each run counted, the counters' series, the objects counted
//! once and the label values kept, saved after each cycle in one transaction and read back at
//! start-up, so counters continue where they were (and `mlflow gc` while the exporter was down is
//! still seen as a correction, not a drop).
//!
//! Both directions go through rusqlite on a blocking thread: the first save writes a row per run
//! (100 000 at a large install), which sqlx's per-row round trips would take seconds over.

use std::path::Path;

use serde_json::{json, Value};

use super::{EventStore, StoreError};
use crate::histogram::{FloatHistogramAcc, HistogramAcc};
use crate::sync::snapshot::RunKey;
use crate::tally::traces::Seen;
use crate::tally::{names, CostSeries, Key, StoredRun, Tally};

/// The family name the corrections are stored under.
const CORRECTIONS: &str = "corrections";
/// The scope under which `tally_trace_cursors` keeps [`TraceLedger::memory_from`] (a workspace's
/// name is never so).
///
/// [`TraceLedger::memory_from`]: crate::tally::traces::TraceLedger::memory_from
const MEMORY_FROM: &str = "*memory";

/// An app's LLM calls cursor: scope, experiment id, where its next read starts.
type LlmCursor = (Box<str>, Box<str>, i64);

/// Rows of one save, made from the tally before it is handed to the writer thread.
#[derive(Debug, Default)]
struct Rows {
    runs: Vec<(RunKey, StoredRun)>,
    series: Vec<(&'static str, String, String)>,
    objects: Vec<(&'static str, Box<str>, bool)>,
    labels: Vec<(String, Box<str>)>,
    /// Traces remembered (or forgotten: `None`), and every scope's cursor when one moved.
    traces: Vec<(u128, Option<Seen>)>,
    /// Feedback remembered with its trace's start (or forgotten: `None`).
    feedback: Vec<(u128, Option<i64>)>,
    cursors: Option<Vec<(Box<str>, i64)>>,
    /// Every app's LLM calls cursor, when one changed.
    llm_cursors: Option<Vec<LlmCursor>>,
    /// Traces the rate card waits for, with scope and experiment (`None`: no longer).
    unrated: Vec<(u128, Option<crate::tally::traces::Waiting>)>,
    /// Apps' users and sessions: (labels, kind, person, last activity or `None`: forgotten).
    app_people: Vec<(String, u8, u64, Option<i64>)>,
}

impl EventStore {
    /// Writes what changed in the tally since the last save. On failure the changes stay in the
    /// tally, to be written with the next save; nothing counted is lost while the exporter runs.
    pub async fn save_tally(&self, tally: &mut Tally) -> Result<usize, StoreError> {
        let mut unsaved = std::mem::take(&mut tally.unsaved);
        let mut labels = Vec::new();
        for (name, sticky) in tally.labels.by_name_mut() {
            labels.extend(
                sticky
                    .take_unsaved()
                    .into_iter()
                    .map(|v| (name.to_string(), v)),
            );
        }
        if unsaved.is_empty() && labels.is_empty() {
            return Ok(0);
        }
        // Moved, not copied: the first save of a large install holds a row per run.
        let mut runs: Vec<(RunKey, StoredRun)> =
            std::mem::take(&mut unsaved.runs).into_iter().collect();
        // In key order the rows append to the table's B-tree instead of landing on random pages:
        // the first save of 1 000 000 runs took 4.5 s unsorted.
        runs.sort_unstable_by_key(|(k, _)| *k);
        let rows = Rows {
            runs,
            series: unsaved
                .series
                .iter()
                .filter_map(|(family, key)| {
                    let data = encode(tally, family, key)?;
                    Some((*family, labels_json(key), data))
                })
                .collect(),
            objects: unsaved.objects.clone(),
            labels,
            traces: by_id(&unsaved.traces.seen),
            feedback: by_id(&unsaved.traces.feedback),
            cursors: unsaved.traces.cursors.then(|| {
                let ledger = &tally.trace_state;
                let mut rows: Vec<(Box<str>, i64)> = ledger
                    .cursors
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                rows.extend(ledger.memory_from.map(|m| (MEMORY_FROM.into(), m)));
                rows
            }),
            unrated: by_id(&unsaved.traces.unrated),
            llm_cursors: unsaved.traces.llm_cursors.then(|| {
                tally
                    .trace_state
                    .llm_cursors
                    .iter()
                    .map(|((s, e), v)| (s.clone(), e.clone(), *v))
                    .collect()
            }),
            app_people: unsaved
                .app_people
                .iter()
                .map(|((k, kind, who), last)| (labels_json(k), *kind, *who, *last))
                .collect(),
        };
        let n = rows.runs.len()
            + rows.app_people.len()
            + rows.series.len()
            + rows.objects.len()
            + rows.labels.len()
            + rows.traces.len()
            + rows.feedback.len()
            + rows.unrated.len();
        let path = self.path.clone();
        let (rows, result) = tokio::task::spawn_blocking(move || {
            let r = write_rows(&path, &rows);
            (rows, r)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the tally writer stopped: {e}")))?;
        if let Err(e) = result {
            unsaved.runs = rows.runs.into_iter().collect();
            tally.unsaved.merge_back(unsaved);
            let mut back: std::collections::HashMap<String, Vec<Box<str>>> = Default::default();
            for (label, value) in rows.labels {
                back.entry(label).or_default().push(value);
            }
            for (name, sticky) in tally.labels.by_name_mut() {
                if let Some(values) = back.remove(name) {
                    sticky.unsave(values);
                }
            }
            return Err(e);
        }
        Ok(n)
    }

    /// Reads the stored tally into `tally` (a new one, made with the current settings).
    pub async fn load_tally(&self, tally: Tally) -> Result<Tally, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read_into(&path, tally))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the tally reader stopped: {e}")))?
    }
}

fn connect(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // As the event store: a commit is on the disk when it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn write_rows(path: &Path, rows: &Rows) -> Result<(), StoreError> {
    let mut conn = connect(path)?;
    let tx = conn.transaction()?;
    {
        let mut run = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_runs (run_key, counted_ms, corrected_ms, flags, \
             hourly_rate, gpus, idle_cost, gone) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        for (key, r) in &rows.runs {
            run.execute(rusqlite::params![
                key.to_be_bytes().as_slice(),
                r.counted_ms as i64,
                r.corrected_ms as i64,
                r.flags,
                r.hourly_rate,
                r.gpus,
                r.idle_cost,
                r.gone,
            ])?;
        }
        let mut series = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_series (family, labels, data) VALUES (?, ?, ?)",
        )?;
        for (family, labels, data) in &rows.series {
            series.execute(rusqlite::params![family, labels, data])?;
        }
        let mut object = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_objects (kind, name, gone) VALUES (?, ?, ?)",
        )?;
        for (kind, name, gone) in &rows.objects {
            object.execute(rusqlite::params![kind, &**name, gone])?;
        }
        let mut label =
            tx.prepare_cached("INSERT OR IGNORE INTO tally_labels (label, value) VALUES (?, ?)")?;
        for (name, value) in &rows.labels {
            label.execute(rusqlite::params![name, &**value])?;
        }
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_traces (trace_id, start_ms, in_progress) VALUES (?, ?, ?)",
        )?;
        let mut forget = tx.prepare_cached("DELETE FROM tally_traces WHERE trace_id = ?")?;
        for (id, seen) in &rows.traces {
            let id = id.to_be_bytes();
            match seen {
                Some(s) => {
                    put.execute(rusqlite::params![id.as_slice(), s.start_ms, s.in_progress])?
                }
                None => forget.execute([id.as_slice()])?,
            };
        }
        let mut given = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_traces (trace_id, start_ms, in_progress, kind) VALUES (?, ?, 0, 1)",
        )?;
        for (id, start) in &rows.feedback {
            let id = id.to_be_bytes();
            match start {
                Some(s) => given.execute(rusqlite::params![id.as_slice(), s])?,
                None => forget.execute([id.as_slice()])?,
            };
        }
        let mut active = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_app_people (labels, kind, person, last_ms) VALUES (?, ?, ?, ?)",
        )?;
        let mut gone = tx.prepare_cached(
            "DELETE FROM tally_app_people WHERE labels = ? AND kind = ? AND person = ?",
        )?;
        for (labels, kind, who, last) in &rows.app_people {
            // SQLite's integers are signed: the 64 bits as they are.
            let who = *who as i64;
            match last {
                Some(at) => active.execute(rusqlite::params![labels, kind, who, at])?,
                None => gone.execute(rusqlite::params![labels, kind, who])?,
            };
        }
        if let Some(cursors) = &rows.cursors {
            tx.execute("DELETE FROM tally_trace_cursors", [])?;
            let mut cursor = tx.prepare_cached(
                "INSERT INTO tally_trace_cursors (scope, since_ms) VALUES (?, ?)",
            )?;
            for (scope, since) in cursors {
                cursor.execute(rusqlite::params![&**scope, since])?;
            }
        }
        let mut wait = tx.prepare_cached(
            "INSERT OR REPLACE INTO tally_unrated (trace_id, scope, experiment) VALUES (?, ?, ?)",
        )?;
        let mut done = tx.prepare_cached("DELETE FROM tally_unrated WHERE trace_id = ?")?;
        for (id, w) in &rows.unrated {
            let id = id.to_be_bytes();
            match w {
                Some((scope, exp)) => {
                    wait.execute(rusqlite::params![id.as_slice(), &**scope, &**exp])?
                }
                None => done.execute([id.as_slice()])?,
            };
        }
        if let Some(cursors) = &rows.llm_cursors {
            tx.execute("DELETE FROM tally_llm_cursors", [])?;
            let mut cursor = tx.prepare_cached(
                "INSERT INTO tally_llm_cursors (scope, experiment, next_ms) VALUES (?, ?, ?)",
            )?;
            for (scope, experiment, next) in cursors {
                cursor.execute(rusqlite::params![&**scope, &**experiment, next])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn read_into(path: &Path, mut tally: Tally) -> Result<Tally, StoreError> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare(
        "SELECT run_key, counted_ms, corrected_ms, flags, hourly_rate, gpus, idle_cost, gone \
         FROM tally_runs",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let key: Vec<u8> = r.get(0)?;
        let key: [u8; 16] = key
            .try_into()
            .map_err(|_| StoreError::Corrupt("a tally run key is not 16 bytes".into()))?;
        let counted: i64 = r.get(1)?;
        let corrected: i64 = r.get(2)?;
        tally.restore_run(
            RunKey::from_be_bytes(key),
            StoredRun {
                counted_ms: counted.max(0) as u64,
                corrected_ms: corrected.max(0) as u64,
                flags: r.get(3)?,
                hourly_rate: r.get(4)?,
                gpus: r.get(5)?,
                idle_cost: r.get(6)?,
                gone: r.get(7)?,
            },
        );
    }
    let mut stmt = conn.prepare("SELECT family, labels, data FROM tally_series")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let family: String = r.get(0)?;
        let labels: String = r.get(1)?;
        let data: String = r.get(2)?;
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "tally series {family} {labels}: {what}; the stored counters cannot be read (delete the tally_* tables to count again from MLflow)"
            ))
        };
        let key: Vec<String> = serde_json::from_str(&labels).map_err(|_| corrupt("labels"))?;
        let key: Key = key.into_iter().map(String::into_boxed_str).collect();
        let data: Value = serde_json::from_str(&data).map_err(|_| corrupt("data"))?;
        decode(&mut tally, &family, key, &data).ok_or_else(|| corrupt("data"))?;
    }
    let mut stmt = conn.prepare("SELECT kind, name, gone FROM tally_objects")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let name: String = r.get(1)?;
        tally.restore_object(&kind, &name, r.get(2)?);
    }
    let mut stmt = conn.prepare("SELECT scope, since_ms FROM tally_trace_cursors")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let scope: String = r.get(0)?;
        if scope == MEMORY_FROM {
            tally.trace_state.memory_from = Some(r.get(1)?);
        } else {
            tally.trace_state.cursors.insert(scope.into(), r.get(1)?);
        }
    }
    let mut stmt = conn.prepare("SELECT trace_id, scope, experiment FROM tally_unrated")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id = id_of(r.get(0)?)?;
        let (scope, exp): (String, String) = (r.get(1)?, r.get(2)?);
        tally
            .trace_state
            .unrated
            .insert(id, (scope.into(), exp.into()));
    }
    let mut stmt = conn.prepare("SELECT scope, experiment, next_ms FROM tally_llm_cursors")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (scope, experiment): (String, String) = (r.get(0)?, r.get(1)?);
        tally
            .trace_state
            .llm_cursors
            .insert((scope.into(), experiment.into()), r.get(2)?);
    }
    let mut stmt =
        conn.prepare("SELECT trace_id, start_ms, in_progress, kind FROM tally_traces")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id = id_of(r.get(0)?)?;
        if r.get::<_, i64>(3)? == 1 {
            tally.trace_state.remember_feedback(id, r.get(1)?);
            continue;
        }
        let seen = Seen {
            start_ms: r.get(1)?,
            in_progress: r.get(2)?,
        };
        tally.trace_state.remember(id, seen);
    }
    let mut stmt = conn.prepare("SELECT labels, kind, person, last_ms FROM tally_app_people")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let labels: String = r.get(0)?;
        let key: Vec<String> = serde_json::from_str(&labels).map_err(|_| {
            StoreError::Corrupt(format!("an app's user is stored under labels {labels}"))
        })?;
        let key: Key = key.into_iter().map(String::into_boxed_str).collect();
        let kind: u8 = r.get(1)?;
        let who: i64 = r.get(2)?;
        if let Some(seen) = tally
            .app_people
            .entry(key)
            .or_default()
            .get_mut(usize::from(kind))
        {
            seen.insert(who as u64, r.get(3)?);
        }
    }
    let mut stmt = conn.prepare("SELECT label, value FROM tally_labels")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let label: String = r.get(0)?;
        let value: String = r.get(1)?;
        for (name, sticky) in tally.labels.by_name_mut() {
            if name == label {
                sticky.restore(&value);
            }
        }
    }
    Ok(tally)
}

/// Rows keyed by a trace's (or a feedback's) id, in id order: they append to the table's B-tree
/// instead of landing on random pages.
fn by_id<V: Clone>(m: &hashbrown::HashMap<u128, V>) -> Vec<(u128, V)> {
    let mut v: Vec<(u128, V)> = m.iter().map(|(k, s)| (*k, s.clone())).collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

/// A histogram of float observations as stored: its counts, their sum and the bounds they are on.
fn float_hist_json(h: &FloatHistogramAcc, bounds: &[f64]) -> Value {
    json!({"c": h.counts, "s": h.sum, "b": bounds})
}

/// A stored histogram of float observations (`c` counts over the `b` bounds they were taken at,
/// `s` their sum) on `bounds`; `None` when it cannot be read.
fn float_hist(v: &Value, bounds: &[f64]) -> Option<FloatHistogramAcc> {
    let stored: Vec<f64> = serde_json::from_value(v["b"].clone()).ok()?;
    let counts: Vec<u64> = serde_json::from_value(v["c"].clone()).ok()?;
    Some(FloatHistogramAcc {
        counts: rebucket(&stored, &counts, bounds)?,
        sum: v["s"].as_f64()?,
    })
}

/// A 16-byte id column as its 128 bits.
fn id_of(bytes: Vec<u8>) -> Result<u128, StoreError> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a trace id is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(id))
}

fn labels_json(key: &Key) -> String {
    Value::from(key.iter().map(|v| Value::from(&**v)).collect::<Vec<_>>()).to_string()
}

/// One series as JSON; `None` for a family or key the tally does not hold.
fn encode(t: &Tally, family: &str, key: &Key) -> Option<String> {
    let hist_ms =
        |h: &HistogramAcc, bounds: &[u64]| json!({"c": h.counts, "s": h.sum_ms, "b": bounds});
    let v = match family {
        names::RUNS_ENDED => json!({"n": t.ended.get(key)?}),
        names::RUN_DURATION => {
            let b = &t.settings.run_bounds_ms;
            let h = t.durations.get(key)?;
            json!({"h": h.iter().map(|h| hist_ms(h, b)).collect::<Vec<_>>()})
        }
        names::RUNS_STARTED => json!({"n": t.started.get(key)?}),
        names::COMPUTE => {
            let c = t.cost.get(key)?;
            json!({"ms": c.ms, "gpu_ms": c.gpu_ms, "r": c.by_rate, "idle": c.idle_cost})
        }
        names::GPU_UTILIZATION => float_hist_json(t.gpu_util.get(key)?, &t.settings.gpu_bounds),
        names::EXPERIMENTS_CREATED => json!({"n": t.experiments_created.get(key)?}),
        names::MODELS_CREATED => json!({"n": t.models_created.get(key)?}),
        names::VERSIONS_CREATED => json!({"n": t.versions_created.get(key)?}),
        names::TIME_TO_FIRST_MODEL => hist_ms(&t.time_to_first_model, &t.settings.ttfm_bounds_ms),
        names::LOGGED_MODELS_CREATED => json!({"n": t.logged_models_created.get(key)?}),
        names::PROMPTS_CREATED => json!({"n": t.prompts_created.get(key)?}),
        names::PROMPT_VERSIONS_CREATED => json!({"n": t.prompt_versions_created.get(key)?}),
        names::TIME_TO_REGISTRATION => hist_ms(&t.time_to_registration, &t.settings.reg_bounds_ms),
        names::TRACES => json!({"n": t.traces.get(key)?}),
        names::TRACE_DURATION => {
            let b = &t.settings.trace_bounds_ms;
            let h = t.trace_durations.get(key)?;
            json!({"h": h.iter().map(|h| hist_ms(h, b)).collect::<Vec<_>>()})
        }
        names::TRACE_TOKENS => json!({"n": t.trace_tokens.get(key)?}),
        names::TRACE_COST => json!({"v": t.trace_cost.get(key)?}),
        names::TRACE_FEEDBACK => {
            let f = t.trace_feedback.get(key)?;
            let mut v = float_hist_json(&f.scores, &t.settings.score_bounds);
            v["n"] = json!(f.values);
            v
        }
        names::JUDGE_COST => json!({"v": t.judge_cost.get(key)?}),
        names::LLM_CALLS => {
            let (n, v) = t.llm_calls.get(key)?;
            json!({"n": n, "v": v})
        }
        names::LOGGED_MODEL_TRACES => json!({"n": t.logged_model_traces.get(key)?}),
        names::RATED_TOKENS => {
            let (n, v) = t.rated.get(key)?;
            json!({"n": n, "v": v})
        }
        names::TRACE_ERRORS => {
            let part = key.first()?;
            let i = crate::sync::traces::malformed::KEYS
                .iter()
                .position(|(_, k)| **k == **part)?;
            json!({"n": t.trace_errors[i]})
        }
        names::TRACES_GIVEN_UP => json!({"n": t.traces_given_up}),
        CORRECTIONS => json!({"v": t.corrections.get(key.first().map(|k| &**k)?)?}),
        _ => return None,
    };
    Some(v.to_string())
}

/// Puts one stored series back into the tally; `None` when the row cannot be read.
fn decode(t: &mut Tally, family: &str, key: Key, v: &Value) -> Option<()> {
    let n = || v["n"].as_u64();
    match family {
        names::RUNS_ENDED => {
            let counts: [u64; 3] = serde_json::from_value(v["n"].clone()).ok()?;
            t.ended.insert(key, counts);
        }
        names::RUN_DURATION => {
            let mut h: [HistogramAcc; 3] = Default::default();
            for (i, slot) in h.iter_mut().enumerate() {
                let stored = &v["h"][i];
                if stored["c"].as_array().is_some_and(|c| !c.is_empty()) {
                    *slot = hist_ms(stored, &t.settings.run_bounds_ms)?;
                }
            }
            t.durations.insert(key, h);
        }
        names::RUNS_STARTED => {
            t.started.insert(key, n()?);
        }
        names::COMPUTE => {
            let by_rate = v["r"]
                .as_array()?
                .iter()
                .map(|p| Some((p[0].as_f64()?, p[1].as_u64()?)))
                .collect::<Option<Vec<_>>>()?;
            t.cost.insert(
                key,
                CostSeries {
                    ms: v["ms"].as_u64()?,
                    gpu_ms: v["gpu_ms"].as_u64()?,
                    by_rate,
                    idle_cost: v["idle"].as_f64()?,
                },
            );
        }
        names::GPU_UTILIZATION => {
            let h = float_hist(v, &t.settings.gpu_bounds)?;
            t.gpu_util.insert(key, h);
        }
        names::EXPERIMENTS_CREATED => {
            t.experiments_created.insert(key, n()?);
        }
        names::MODELS_CREATED => {
            t.models_created.insert(key, n()?);
        }
        names::VERSIONS_CREATED => {
            t.versions_created.insert(key, n()?);
        }
        names::TIME_TO_FIRST_MODEL => {
            t.time_to_first_model = hist_ms(v, &t.settings.ttfm_bounds_ms)?;
        }
        names::LOGGED_MODELS_CREATED => {
            t.logged_models_created.insert(key, n()?);
        }
        names::PROMPTS_CREATED => {
            t.prompts_created.insert(key, n()?);
        }
        names::PROMPT_VERSIONS_CREATED => {
            t.prompt_versions_created.insert(key, n()?);
        }
        names::TIME_TO_REGISTRATION => {
            t.time_to_registration = hist_ms(v, &t.settings.reg_bounds_ms)?;
        }
        names::TRACES => {
            t.traces
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::TRACE_DURATION => {
            let mut h: [HistogramAcc; 2] = Default::default();
            for (i, slot) in h.iter_mut().enumerate() {
                let stored = &v["h"][i];
                if stored["c"].as_array().is_some_and(|c| !c.is_empty()) {
                    *slot = hist_ms(stored, &t.settings.trace_bounds_ms)?;
                }
            }
            t.trace_durations.insert(key, h);
        }
        names::TRACE_TOKENS => {
            t.trace_tokens
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::TRACE_COST => {
            t.trace_cost.insert(key, v["v"].as_f64()?);
        }
        names::TRACE_FEEDBACK => {
            let values: [u64; 5] = serde_json::from_value(v["n"].clone()).ok()?;
            let scores = float_hist(v, &t.settings.score_bounds)?;
            t.trace_feedback
                .insert(key, crate::tally::traces::FeedbackCounts { values, scores });
        }
        names::JUDGE_COST => {
            t.judge_cost.insert(key, v["v"].as_f64()?);
        }
        names::LLM_CALLS => {
            t.llm_calls.insert(key, (n()?, v["v"].as_f64()?));
        }
        names::LOGGED_MODEL_TRACES => {
            t.logged_model_traces
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::RATED_TOKENS => {
            let n: [u64; 2] = serde_json::from_value(v["n"].clone()).ok()?;
            t.rated.insert(key, (n, v["v"].as_f64()?));
        }
        names::TRACE_ERRORS => {
            // A part this version does not read is left alone.
            let part = key.first()?;
            if let Some(i) = crate::sync::traces::malformed::KEYS
                .iter()
                .position(|(_, k)| **k == **part)
            {
                t.trace_errors[i] = n()?;
            }
        }
        names::TRACES_GIVEN_UP => {
            t.traces_given_up = n()?;
        }
        CORRECTIONS => {
            let value = v["v"].as_f64()?;
            // Corrections of a family this version does not count (a later one's, or one that
            // left the tally) are left alone, as its series are.
            if let Some(family) = names::ALL
                .into_iter()
                .find(|f| Some(*f) == key.first().map(|k| &**k))
            {
                t.corrections.insert(family, value);
            }
        }
        // A family of a later version: left alone.
        _ => {}
    }
    Some(())
}

/// A stored histogram in ms, its counts moved onto `bounds` if the buckets were reconfigured.
fn hist_ms(v: &Value, bounds: &[u64]) -> Option<HistogramAcc> {
    let stored: Vec<u64> = serde_json::from_value(v["b"].clone()).ok()?;
    let counts: Vec<u64> = serde_json::from_value(v["c"].clone()).ok()?;
    Some(HistogramAcc {
        counts: rebucket(&stored, &counts, bounds)?,
        sum_ms: v["s"].as_u64()?,
    })
}

/// Per-bucket counts over `old` bounds (one more count than bounds) moved onto `new` bounds: each
/// old bucket's count goes to the first new bucket whose bound is at least the old one (the
/// overflow bucket to the new overflow bucket). Count and sum stay exact; with other buckets, the
/// new ones are an upper estimate. `None` when the counts do not fit the bounds.
pub(crate) fn rebucket<B: PartialOrd + Copy>(
    old: &[B],
    counts: &[u64],
    new: &[B],
) -> Option<Vec<u64>> {
    if counts.is_empty() {
        return Some(Vec::new());
    }
    if counts.len() != old.len() + 1 {
        return None;
    }
    if old.len() == new.len() && old.iter().zip(new).all(|(a, b)| a == b) {
        return Some(counts.to_vec());
    }
    let mut out = vec![0; new.len() + 1];
    for (i, c) in counts.iter().enumerate() {
        let j = match old.get(i) {
            Some(bound) => new.partition_point(|b| b < bound),
            None => new.len(),
        };
        out[j] += c;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconfigured_buckets_keep_every_observation() {
        assert_eq!(
            rebucket(&[1, 10], &[2, 1, 1], &[1, 10]),
            Some(vec![2, 1, 1])
        );
        // 1 → 5, 10 → 10, overflow stays overflow.
        assert_eq!(
            rebucket(&[1, 10], &[2, 1, 1], &[5, 10, 20]),
            Some(vec![2, 1, 0, 1])
        );
        assert_eq!(rebucket(&[1, 10], &[2, 1, 1], &[3]), Some(vec![2, 2]));
        assert_eq!(rebucket(&[1, 10], &[2, 1], &[3]), None);
        assert_eq!(rebucket::<u64>(&[], &[], &[3]), Some(vec![]));
    }

    /// Rows of a family this version does not count, and corrections of one, are left alone:
    /// the tally still loads.
    #[tokio::test]
    async fn rows_of_families_not_counted_here_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = crate::store::EventStore::open(&path).await.unwrap();
        let conn = connect(&path).unwrap();
        for (family, labels, data) in [
            ("mlflow_later_total", r#"["a"]"#, r#"{"n": 3}"#),
            (CORRECTIONS, r#"["mlflow_later_total"]"#, r#"{"v": 2.0}"#),
            (
                CORRECTIONS,
                r#"["mlflow_runs_ended_total"]"#,
                r#"{"v": 1.0}"#,
            ),
        ] {
            conn.execute(
                "INSERT INTO tally_series (family, labels, data) VALUES (?1, ?2, ?3)",
                [family, labels, data],
            )
            .unwrap();
        }
        let settings = crate::config::Settings::default();
        let tally = store.load_tally(Tally::new(&settings)).await.unwrap();
        // Every family counted here has its corrections (at 0 but the one stored), no other.
        assert_eq!(tally.corrections.get(names::RUNS_ENDED), Some(&1.0));
        assert_eq!(tally.corrections.values().sum::<f64>(), 1.0);
        assert_eq!(tally.corrections.len(), names::ALL.len());
    }
}
