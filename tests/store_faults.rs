//! The event store on a disk that fills up (a real 4 MiB tmpfs, mounted by the test): the events
//! receiver answers 503 so the sender retries, counts each as an error, loses nothing it
//! acknowledged, and records again as soon as there is space.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, http_get, http_post, stored_events, wait_until, ExporterProcess, Scrape};

const TOKEN: &str = "store-faults-token";

/// A tmpfs mounted for the test's life; unmounted (lazily, so an open file cannot stop it) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs to fill it (needs root, as scripts/test runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn post(addr: &str, id: &str) -> (u16, String) {
    let body = serde_json::json!({
        "type": "incident_opened", "model": "m", "id": id, "severity": "s",
        "at": common::now_ms() / 1000,
    });
    let r = http_post(
        addr,
        "/api/v1/events",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap();
    (r.status, r.text())
}

/// Fills the file system at `dir` with one file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    // Bounded: the tmpfs is 4 MiB.
    for _ in 0..1024 {
        if f.write_all(&block).and_then(|_| f.sync_all()).is_err() {
            return path;
        }
    }
    panic!("the tmpfs never filled");
}

#[test]
fn a_full_then_read_only_disk_answers_503_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "4m");
    let store = disk.path.join("events.db");
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let exporter = ExporterProcess::start_on_store(
        dir.path(),
        &store,
        &["--mlflow.sync-interval=1h"],
        &[
            ("MLFLOW_TRACKING_URI", mlflow.as_str()),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__ENABLED", "true"),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", TOKEN),
            ("MLFLOW_EXPORTER_WEBHOOKS__RATE_LIMIT", "100000"),
            ("MLFLOW_EXPORTER_WEBHOOKS__RATE_BURST", "100000"),
        ],
    );
    wait_until(Duration::from_secs(30), "the exporter", || {
        http_get(&exporter.addr, "/-/healthy", &[]).is_ok_and(|r| r.status == 200)
    });
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let (status, text) = post(&exporter.addr, "before");
    assert_eq!(status, 200, "{text}");
    acked.push("before".into());

    // Disk full: events until one is refused (the WAL may have room for a few first).
    let filler = fill(&disk.path);
    for n in 0..500 {
        let id = format!("full-{n}");
        match post(&exporter.addr, &id) {
            (200, _) => acked.push(id),
            (503, text) => {
                assert!(
                    text.contains("cannot store the events, nothing was recorded; retry later"),
                    "{text}"
                );
                refused.push(id);
                if refused.len() == 3 {
                    break;
                }
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(refused.len(), 3, "a full disk never refused an event");
    // /metrics still answers, and counts them (re-encoded at most 1 s after a change).
    wait_until(Duration::from_secs(3), "3 store errors counted", || {
        let s = Scrape::parse(&http_get(&exporter.addr, "/metrics", &[]).unwrap().text());
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "api"), ("outcome", "error")],
        ) == 3.0
    });

    // Space again: the refused events, sent again (as a sender retries), are recorded.
    std::fs::remove_file(&filler).unwrap();
    for id in &refused {
        let (status, text) = post(&exporter.addr, id);
        assert_eq!(status, 200, "{id} after the disk recovered: {text}");
        assert!(text.contains(r#""recorded":1"#), "{text}");
    }
    acked.append(&mut refused);

    drop(exporter);

    // Every acknowledged event is in the store, once.
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for e in stored_events(&store) {
        let id = e["incident"]
            .as_str()
            .unwrap()
            .trim_start_matches("api\u{1f}");
        *stored.entry(id.to_string()).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(stored.get(id), Some(&1), "{id}: {stored:?}");
    }
    assert_eq!(stored.len(), acked.len(), "{stored:?}");
}
