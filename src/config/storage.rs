//! The durable history of delivery events: `storage.*`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The durable history of delivery events.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// SQLite database file (`--storage.path`); its directory is created if missing.
    pub path: PathBuf,
    /// Events older than this are deleted (at start-up and daily).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            path: PathBuf::from("./data/mlflow-exporter.db"),
            retention: Duration::from_secs(400 * 86400),
        }
    }
}
