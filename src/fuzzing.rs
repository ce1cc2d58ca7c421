//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz`) and of their regression tests
//! (`tests/it/fuzz_regressions.rs`): each hands arbitrary bytes to a parser that the network or a user
//! reaches, the way the exporter does. Any input may be refused; none may panic.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::config::{FlagOverrides, Settings};
use crate::server::web_config::WebConfig;
use crate::source::events_api::ApiEvent;
use crate::source::mlflow::model::SearchRunsResponse;
use crate::source::{alertmanager, mlflow_webhook};
use crate::sync::snapshot::Interner;
use crate::sync::Extractor;

/// A fixed "now" (2023-11-14), so a crash found once reproduces.
const NOW_MS: i64 = 1_700_000_000_000;

fn extractor() -> &'static Extractor {
    static EX: OnceLock<Extractor> = OnceLock::new();
    EX.get_or_init(|| {
        let s = Settings::default();
        Extractor::new(&s, crate::sync::Card::new(&s))
    })
}

/// A page of `runs/search` as MLflow answers it: decoded as the client decodes it, then turned into
/// snapshot records and merged, as a sync does.
pub fn runs_page(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(page) = serde_json::from_str::<SearchRunsResponse>(text) else {
        return;
    };
    let records = extractor().page(&page.runs);
    let mut strings = Interner::default();
    let mut out = Vec::new();
    records.merge_into(&mut strings, &mut out);
}

/// MLflow's webhook: the first three lines are the delivery id, timestamp and signature headers,
/// the rest is the body; checked, then read, as the receiver does.
pub fn mlflow_webhook(data: &[u8]) {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let (Some(id), Some(ts), Some(sig), Some(body)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(id), Ok(timestamp), Ok(signature)) = (
        std::str::from_utf8(id),
        std::str::from_utf8(ts),
        std::str::from_utf8(sig),
    ) else {
        return;
    };
    let delivery = mlflow_webhook::Delivery {
        id,
        timestamp,
        signature,
    };
    let _ = mlflow_webhook::verify(b"fuzz-secret", &delivery, body, NOW_MS);
    if let Ok(p) = serde_json::from_slice::<mlflow_webhook::Payload>(body) {
        let _ = alertmanager::parse_time(&p.timestamp);
        let _ = serde_json::from_value::<mlflow_webhook::AliasData>(p.data.clone());
    }
}

/// Alertmanager's webhook body, turned into incident events.
pub fn alertmanager(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<alertmanager::Payload>(data) {
        for workspaces in [false, true] {
            let _ = alertmanager::events(&p, "model", "severity", workspaces);
        }
    }
}

/// A CI/CD event (`POST /api/v1/events`), checked as the receiver does.
pub fn events_api(data: &[u8]) {
    if let Ok(e) = serde_json::from_slice::<ApiEvent>(data) {
        let _ = e.check(NOW_MS);
    }
}

/// The configuration file, validated whole (probes included) as start-up does.
pub fn config_file(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let env = HashMap::from([(
        "MLFLOW_TRACKING_URI".to_string(),
        "http://127.0.0.1:5000".to_string(),
    )]);
    if let Ok(s) = Settings::from_yaml(yaml, &env, &FlagOverrides::default()) {
        let _ = s.probes.specs();
        let _ = s.to_redacted_yaml();
    }
}

/// The web config file (`--web.config.file`); file names resolve in a directory with no files.
pub fn web_config(data: &[u8]) {
    let _ = WebConfig::parse(data, std::path::Path::new("/nonexistent-fuzz-dir"));
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for `tests/it/fuzz_regressions.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("runs_page", runs_page),
    ("mlflow_webhook", mlflow_webhook),
    ("alertmanager", alertmanager),
    ("events_api", events_api),
    ("config_file", config_file),
    ("web_config", web_config),
];
