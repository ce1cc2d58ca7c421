//! The durable history: an embedded SQLite database (WAL) of delivery events, with versioned
//! migrations. An event is committed before anything counts it, so counters survive restarts and a
//! crash loses nothing that was acknowledged.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::delivery::{Delivery, Event, Kind, Source, Subject};

pub mod probes;
pub mod tally;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the event store at {path}: {detail}; check that the directory is writable (--storage.path)")]
    Open { path: String, detail: String },
    #[error("event store: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("event store, reading the history: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("event store holds an event the exporter cannot read: {0}")]
    Corrupt(String),
}

#[derive(Clone)]
pub struct EventStore {
    pool: SqlitePool,
    path: std::path::PathBuf,
}

impl EventStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<EventStore, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: path.display().to_string(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_err(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An event is acknowledged only once it is on the disk. NORMAL survives a crash of the
            // process, but a disk the kernel turns read-only after an error (or a power loss) drops
            // the commits still in the page cache: tests/it/store_faults.rs lost the whole store so.
            // FULL syncs the WAL at each commit (~0.2 ms here; the receivers' rate fell from
            // 4 400–5 000 to 2 400 events/s, as the recorder commits one request at a time).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // sqlx recycles connections (idle 10 min, any after 30 min) for servers that drop them;
            // a file has no such server, and each new connection is a new thread and page cache.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(EventStore {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// Runs `work` in one transaction on a connection of its own. When anything fails (a full or
    /// read-only disk), the connection is closed instead of going back to the pool: SQLite may still
    /// hold its write lock there, and every later write would wait on it and fail as "locked".
    pub(crate) async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let out = work(&mut tx).await?;
            tx.commit().await?;
            Ok(out)
        }
        .await;
        if result.is_err() {
            let _ = conn.close().await;
        }
        result
    }

    /// Commits events in one transaction; an event whose change is already stored is skipped.
    /// Returns the events that were new, in order.
    pub async fn append(
        &self,
        events: &[Event],
        recorded_ms: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.write(async |tx| {
        let mut added = Vec::with_capacity(events.len());
        for e in events {
            let done = sqlx::query(
                "INSERT OR IGNORE INTO events (dedup_key, kind, source, model, target, version, at_ms, \
                 recorded_ms, run_start_ms, run_end_ms, version_created_ms, incident, severity, team, subject) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.dedup_key)
            .bind(e.kind.as_str())
            .bind(e.source.as_str())
            .bind(&e.model)
            .bind(&e.target)
            .bind(e.version.map(i64::from))
            .bind(e.at_ms)
            .bind(recorded_ms)
            .bind(e.run_start_ms)
            .bind(e.run_end_ms)
            .bind(e.version_created_ms)
            .bind(&e.incident)
            .bind(&e.severity)
            .bind(&e.team)
            .bind(e.subject.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                added.push(e.clone());
            }
        }
        Ok(added)
        })
        .await
    }

    /// Every stored event, in the order they were recorded.
    pub async fn load(&self) -> Result<Vec<Event>, StoreError> {
        self.fold(Vec::new(), |all, e| all.push(e)).await
    }

    /// The delivery history: the checkpoint retention left (if any) in `fresh`, with every event
    /// stored after it folded in, in order.
    pub async fn load_delivery(&self, fresh: Delivery) -> Result<Delivery, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let (upto, state) = read_checkpoint(&path)?;
            let start = match state {
                Some(text) => Delivery::from_checkpoint(fresh, &text).ok_or_else(|| {
                    StoreError::Corrupt(
                        "the delivery checkpoint cannot be read (delete the delivery_checkpoint row to fold the events left without it)".into(),
                    )
                })?,
                None => fresh,
            };
            fold_file(&path, upto, start, |d, e| d.apply(&e))
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the history reader stopped: {e}")))?
    }

    /// Deletes the events older than `before_ms` that are not followed (in the order recorded) by
    /// a newer one, after folding them into the checkpoint, in one transaction: the history's
    /// counters do not go back at the next start. `fresh` is an empty history with the current
    /// settings. Returns how many events were deleted.
    pub async fn compact_before(&self, before_ms: i64, fresh: Delivery) -> Result<u64, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || compact_file(&path, before_ms, fresh))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the history compaction stopped: {e}")))?
    }

    /// Folds every stored event, in order, into `acc` on a blocking thread. It reads the file
    /// directly with rusqlite: through sqlx, the per-row overhead made a start-up over a million
    /// events take more than 5 s, most of it waking threads.
    pub async fn fold<T: Send + 'static>(
        &self,
        acc: T,
        f: impl FnMut(&mut T, Event) + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || fold_file(&path, 0, acc, f))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the history reader stopped: {e}")))?
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The checkpoint: the last event id folded in it (0 without one), and its state.
fn read_checkpoint(path: &Path) -> Result<(i64, Option<String>), StoreError> {
    use rusqlite::OptionalExtension;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT upto_id, state FROM delivery_checkpoint WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((upto, state)) => (upto, Some(state)),
        None => (0, None),
    })
}

fn compact_file(path: &Path, before_ms: i64, fresh: Delivery) -> Result<u64, StoreError> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The prefix of events older than the cutoff: up to the first newer one.
    let last: Option<i64> = conn.query_row(
        "SELECT COALESCE((SELECT MIN(id) FROM events WHERE at_ms >= ?1) - 1, (SELECT MAX(id) FROM events))",
        [before_ms],
        |r| r.get(0),
    )?;
    let (upto, state) = read_checkpoint(path)?;
    let Some(last) = last.filter(|l| *l > upto) else {
        return Ok(0);
    };
    let start = match state {
        Some(text) => Delivery::from_checkpoint(fresh, &text)
            .ok_or_else(|| StoreError::Corrupt("the delivery checkpoint cannot be read".into()))?,
        None => fresh,
    };
    let folded = fold_rows(&mut conn, upto, Some(last), start, |d, e| d.apply(&e))?;
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO delivery_checkpoint (id, upto_id, state) VALUES (1, ?1, ?2)",
        rusqlite::params![last, folded.checkpoint()],
    )?;
    let deleted = tx.execute("DELETE FROM events WHERE id <= ?1", [last])?;
    tx.commit()?;
    Ok(deleted as u64)
}

fn fold_file<T>(
    path: &Path,
    after_id: i64,
    acc: T,
    f: impl FnMut(&mut T, Event),
) -> Result<T, StoreError> {
    use rusqlite::OpenFlags;
    let mut conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    fold_rows(&mut conn, after_id, None, acc, f)
}

/// Folds the events with ids in `(after_id, upto]` (no upper end without `upto`), in order.
fn fold_rows<T>(
    conn: &mut rusqlite::Connection,
    after_id: i64,
    upto: Option<i64>,
    mut acc: T,
    mut f: impl FnMut(&mut T, Event),
) -> Result<T, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT dedup_key, kind, source, model, target, version, at_ms, run_start_ms, run_end_ms, \
         version_created_ms, incident, severity, team, subject FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query([after_id, upto.unwrap_or(i64::MAX)])?;
    while let Some(r) = rows.next()? {
        let kind = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let source = r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
        let version: Option<i64> = r.get(5)?;
        let subject = r.get_ref(13)?.as_str().map_err(rusqlite::Error::from)?;
        let event = Event {
            subject: Subject::parse(subject)
                .ok_or_else(|| StoreError::Corrupt(format!("subject {subject:?}")))?,
            dedup_key: r.get(0)?,
            kind: Kind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
            source: Source::parse(source)
                .ok_or_else(|| StoreError::Corrupt(format!("source {source:?}")))?,
            model: r.get(3)?,
            target: r.get(4)?,
            version: version.and_then(|v| u32::try_from(v).ok()),
            at_ms: r.get(6)?,
            run_start_ms: r.get(7)?,
            run_end_ms: r.get(8)?,
            version_created_ms: r.get(9)?,
            incident: r.get(10)?,
            severity: r.get(11)?,
            team: r.get(12)?,
        };
        f(&mut acc, event);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64, at_ms: i64) -> Event {
        Event {
            dedup_key: format!("m\u{1f}champion\u{1f}{n}"),
            kind: if n == 1 {
                Kind::Baseline
            } else {
                Kind::Deployment
            },
            source: Source::Poll,
            subject: Subject::Model,
            model: "m".into(),
            target: "champion".into(),
            version: Some(n as u32),
            at_ms,
            run_start_ms: Some(at_ms - 10),
            run_end_ms: None,
            version_created_ms: Some(at_ms - 5),
            incident: None,
            severity: None,
            team: None,
        }
    }

    #[tokio::test]
    async fn events_survive_a_reopen_once_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/events.db");
        let store = EventStore::open(&path).await.unwrap();
        let added = store
            .append(&[event(1, 100), event(2, 200)], 1)
            .await
            .unwrap();
        assert_eq!(added.len(), 2);
        // The same change again (say a webhook after the poll), with another time: kept once.
        let again = store
            .append(&[event(2, 250), event(3, 300)], 2)
            .await
            .unwrap();
        assert_eq!(again, vec![event(3, 300)]);
        store.close().await;

        let store = EventStore::open(&path).await.unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            vec![event(1, 100), event(2, 200), event(3, 300)]
        );
        let times = store
            .fold(Vec::new(), |t, e| t.push(e.at_ms))
            .await
            .unwrap();
        assert_eq!(times, vec![100, 200, 300]);
    }

    /// A prompt's change is stored as one: read back a prompt's, beside the model's of the same
    /// name and number, and folded into the prompts' history.
    #[tokio::test]
    async fn a_prompt_change_is_read_back_as_a_prompt_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = EventStore::open(&path).await.unwrap();
        let fresh = || Delivery::new(crate::delivery::Bounds::new(&Default::default()));
        let times = crate::delivery::VersionTimes::default();
        let prompt = fresh()
            .prompts()
            .change(
                Kind::Deployment,
                Source::Poll,
                "m",
                "champion",
                1,
                100,
                times,
            )
            .unwrap();
        assert_eq!(prompt.subject, Subject::Prompt);
        let added = store.append(&[event(1, 100), prompt.clone()], 1).await;
        assert_eq!(added.unwrap().len(), 2);
        store.close().await;

        let store = EventStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![event(1, 100), prompt]);
        let d = store.load_delivery(fresh()).await.unwrap();
        assert_eq!(d.serving("m", "champion"), Some(1));
        assert_eq!(d.prompts().serving("m", "champion"), Some(1));
        let deployments = |d: &Delivery| d.figures[&("m".into(), "champion".into())].deployments;
        assert_eq!((deployments(&d), deployments(d.prompts())), (0, 1));
    }

    /// Retention folds the old events into the checkpoint before deleting them: the history read
    /// back has every figure it had, across a reopen, and a second compaction changes nothing.
    #[tokio::test]
    async fn retention_keeps_what_the_deleted_events_counted() {
        use crate::delivery::{Bounds, Delivery};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = EventStore::open(&path).await.unwrap();
        // A baseline at 100, deployments at 200 and 300, an incident opened at 250, resolved at 400.
        let opened = Event::incident(Kind::IncidentOpened, Source::Api, "i", "m", "sev", 250);
        let resolved = Event::incident(Kind::IncidentResolved, Source::Api, "i", "m", "sev", 400);
        let events = [
            event(1, 100),
            event(2, 200),
            opened,
            event(3, 300),
            resolved,
        ];
        store.append(&events, 1).await.unwrap();
        let fresh = || Delivery::new(Bounds::new(&Default::default()));
        let all = store.load_delivery(fresh()).await.unwrap();
        // Events before 260, up to the first newer one: the first three.
        assert_eq!(store.compact_before(260, fresh()).await.unwrap(), 3);
        assert_eq!(store.compact_before(260, fresh()).await.unwrap(), 0);
        assert_eq!(store.load().await.unwrap().len(), 2);
        store.close().await;
        let store = EventStore::open(&path).await.unwrap();
        let back = store.load_delivery(fresh()).await.unwrap();
        let key = ("m".to_string(), "champion".to_string());
        assert_eq!(back.events, 5);
        assert_eq!(
            back.figures[&key].deployments,
            all.figures[&key].deployments
        );
        assert_eq!(back.figures[&key].deployments, 2);
        assert_eq!(back.serving("m", "champion"), Some(3));
        let inc = ("m".to_string(), "sev".to_string());
        assert_eq!(
            (back.incidents[&inc].opened, back.incidents[&inc].open),
            (1, 0)
        );
        let lead = |d: &Delivery| {
            d.histograms
                .values()
                .map(|h| h.lead_time.sum_ms)
                .sum::<u64>()
        };
        assert_eq!(lead(&back), lead(&all));
        let restore = |d: &Delivery| d.incident_recovery.values().map(|h| h.sum_ms).sum::<u64>();
        assert_eq!(restore(&back), 150);
        // The next change is numbered past the stored ones.
        let next = back
            .change(
                Kind::Deployment,
                Source::Poll,
                "m",
                "champion",
                4,
                500,
                Default::default(),
            )
            .unwrap();
        assert_eq!(next.dedup_key, "m\u{1f}champion\u{1f}4");
        // Everything gone: the checkpoint holds it all.
        assert_eq!(store.compact_before(1_000, fresh()).await.unwrap(), 2);
        let last = store.load_delivery(fresh()).await.unwrap();
        assert_eq!(last.events, 5);
        assert_eq!(lead(&last), lead(&all));
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = EventStore::open(&file.join("events.db"))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("a-file") && text.contains("--storage.path"),
            "{text}"
        );
    }
}
