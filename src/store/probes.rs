//! Probe history in the event store: outages as they open and close, and each probe's running
//! totals (saved on every outage change and periodically), read back at start-up.

use std::collections::HashMap;

use super::{EventStore, StoreError};
use crate::probes::availability::{Totals, Transition};

/// One stored outage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outage {
    pub probe: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// The failure that opened it (`timeout`, `connect`, ...).
    pub reason: String,
}

impl EventStore {
    /// Records an outage opening or closing together with the probe's totals, in one transaction.
    pub async fn record_outage(
        &self,
        probe: &str,
        change: Transition,
        reason: &str,
        totals: &Totals,
    ) -> Result<(), StoreError> {
        self.write(async |tx| {
        match change {
            Transition::Opened { start_ms } => {
                sqlx::query(
                    "INSERT OR IGNORE INTO probe_outages (probe, started_ms, reason) VALUES (?, ?, ?)",
                )
                .bind(probe)
                .bind(start_ms)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
            Transition::Closed { start_ms, end_ms } => {
                sqlx::query(
                    "UPDATE probe_outages SET ended_ms = ? WHERE probe = ? AND started_ms = ?",
                )
                .bind(end_ms)
                .bind(probe)
                .bind(start_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        upsert_totals(tx, probe, totals).await
        })
        .await
    }

    /// Saves the totals of many probes in one transaction.
    pub async fn save_probe_totals(&self, all: &[(String, Totals)]) -> Result<(), StoreError> {
        self.write(async |tx| {
            for (probe, t) in all {
                upsert_totals(tx, probe, t).await?;
            }
            Ok(())
        })
        .await
    }

    /// The saved totals of every probe.
    pub async fn probe_totals(&self) -> Result<HashMap<String, Totals>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT probe, uptime_ms, outage_ms, outages, observed_ms, open_since_ms FROM probe_totals",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(p, uptime_ms, outage_ms, outages, observed_ms, open_since_ms)| {
                    let t = Totals {
                        uptime_ms,
                        outage_ms,
                        outages: u64::try_from(outages).unwrap_or(0),
                        observed_ms,
                        open_since_ms,
                    };
                    (p, t)
                },
            )
            .collect())
    }

    /// Every stored outage, oldest first.
    pub async fn outages(&self) -> Result<Vec<Outage>, StoreError> {
        let rows: Vec<(String, i64, Option<i64>, String)> = sqlx::query_as(
            "SELECT probe, started_ms, ended_ms, reason FROM probe_outages ORDER BY started_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(probe, started_ms, ended_ms, reason)| Outage {
                probe,
                started_ms,
                ended_ms,
                reason,
            })
            .collect())
    }

    /// Deletes closed outages that ended before `before_ms` (the totals keep counting them).
    pub async fn purge_outages_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM probe_outages WHERE ended_ms IS NOT NULL AND ended_ms < ?")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

/// Saves totals unless newer ones are stored: a checkpoint's snapshot taken before an outage change
/// may commit after it, and must not undo it.
async fn upsert_totals(
    tx: &mut sqlx::SqliteConnection,
    probe: &str,
    t: &Totals,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO probe_totals (probe, uptime_ms, outage_ms, outages, observed_ms, open_since_ms) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (probe) DO UPDATE SET uptime_ms = excluded.uptime_ms, \
         outage_ms = excluded.outage_ms, outages = excluded.outages, observed_ms = excluded.observed_ms, \
         open_since_ms = excluded.open_since_ms WHERE excluded.observed_ms >= probe_totals.observed_ms",
    )
    .bind(probe)
    .bind(t.uptime_ms)
    .bind(t.outage_ms)
    .bind(i64::try_from(t.outages).unwrap_or(i64::MAX))
    .bind(t.observed_ms)
    .bind(t.open_since_ms)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outages_and_totals_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = EventStore::open(&path).await.unwrap();
        let open = Totals {
            uptime_ms: 5_000,
            outage_ms: 0,
            outages: 1,
            observed_ms: 5_000,
            open_since_ms: Some(5_000),
        };
        store
            .record_outage(
                "churn",
                Transition::Opened { start_ms: 5_000 },
                "connect",
                &open,
            )
            .await
            .unwrap();
        let closed = Totals {
            uptime_ms: 5_000,
            outage_ms: 7_000,
            outages: 1,
            observed_ms: 12_000,
            open_since_ms: None,
        };
        store
            .record_outage(
                "churn",
                Transition::Closed {
                    start_ms: 5_000,
                    end_ms: 12_000,
                },
                "connect",
                &closed,
            )
            .await
            .unwrap();
        let later = Totals {
            uptime_ms: 8_000,
            observed_ms: 15_000,
            ..closed
        };
        store
            .save_probe_totals(&[
                ("churn".into(), later),
                ("mlflow".into(), Totals::default()),
            ])
            .await
            .unwrap();
        store.close().await;

        let store = EventStore::open(&path).await.unwrap();
        let totals = store.probe_totals().await.unwrap();
        assert_eq!(totals.len(), 2);
        assert_eq!(totals["churn"], later);
        assert_eq!(totals["mlflow"], Totals::default());
        let outage = Outage {
            probe: "churn".into(),
            started_ms: 5_000,
            ended_ms: Some(12_000),
            reason: "connect".into(),
        };
        assert_eq!(store.outages().await.unwrap(), vec![outage]);
        // A checkpoint snapshot older than what is stored does not overwrite it.
        let stale = Totals {
            observed_ms: 14_000,
            open_since_ms: Some(5_000),
            ..later
        };
        store
            .save_probe_totals(&[("churn".into(), stale)])
            .await
            .unwrap();
        assert_eq!(store.probe_totals().await.unwrap()["churn"], later);
        assert_eq!(store.purge_outages_before(12_000).await.unwrap(), 0);
        assert_eq!(store.purge_outages_before(12_001).await.unwrap(), 1);
        assert_eq!(store.probe_totals().await.unwrap()["churn"], later);
    }
}
