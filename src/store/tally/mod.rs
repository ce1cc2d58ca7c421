//! The tally in the event store: what each run counted, the counters' series, the objects counted
//! once and the label values kept, saved after each cycle in one transaction and read back at
//! start-up, so counters continue where they were (and `mlflow gc` while the exporter was down is
//! still seen as a correction, not a drop).
//!
//! Both directions go through rusqlite on a blocking thread: the first save writes a row per run
//! (100 000 at a large install), which sqlx's per-row round trips would take seconds over.
//!
//! Here: the rows of a save and their tables; each series' JSON in a row is in `series.rs`.

mod series;

use std::path::Path;

use serde_json::Value;

use super::{EventStore, StoreError};
use crate::sync::snapshot::RunKey;
use crate::tally::traces::Seen;
use crate::tally::{Key, StoredRun, Tally};
use series::{decode, encode};

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
