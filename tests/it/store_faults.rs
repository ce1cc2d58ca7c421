//! The event store on a disk that fills up (a real 4 MiB tmpfs) or goes read-only (a real ext4 on a
//! loop device, failed through the kernel's own error path), both mounted by the tests: the events
//! receiver answers 503 so the sender retries, counts each as an error, loses nothing it
//! acknowledged, and records again once the disk has space or has been repaired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::exporter::{stored_events, ExporterProcess};
use crate::support::http::{free_port, http_get, http_post, wait_until};
use crate::support::scrape::Scrape;

const TOKEN: &str = "store-faults-token";

/// A tmpfs mounted for the test's life; unmounted (lazily, so an open file cannot stop it) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={size}");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &size,
                "tmpfs",
                &path.display().to_string(),
            ],
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
        "at": support::now_ms() / 1000,
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

/// An ext4 file system in a file, on a loop device, mounted with `errors=remount-ro`: what a cloud
/// disk does when it fails. Unmounted (lazily) and detached on drop.
struct Ext4 {
    image: PathBuf,
    path: PathBuf,
}

impl Ext4 {
    fn mount(image: &Path, path: &Path) -> Ext4 {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(32 << 20))
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", &image.display().to_string()]);
        let disk = Ext4 {
            image: image.to_path_buf(),
            path: path.to_path_buf(),
        };
        disk.attach();
        disk
    }

    fn attach(&self) {
        std::fs::create_dir_all(&self.path).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                &self.image.display().to_string(),
                &self.path.display().to_string(),
            ],
        );
    }

    /// An error inside the file system (as a failing disk raises): the kernel remounts it read-only
    /// under the open files, which then fail every write with EROFS.
    fn fail(&self) {
        let source = run(
            "findmnt",
            &["-n", "-o", "SOURCE", &self.path.display().to_string()],
        );
        let device = source.trim().trim_start_matches("/dev/");
        std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "1").unwrap();
    }

    /// What an operator does: unmount, check, mount again at the same place. The exporter keeps
    /// running; its connections to the old mount fail and are replaced by ones opening the new.
    fn repair(&self) {
        run("umount", &["-l", &self.path.display().to_string()]);
        // 0: clean, 1: errors corrected.
        let code = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output()
            .unwrap()
            .status
            .code();
        assert!(matches!(code, Some(0 | 1)), "e2fsck exited {code:?}");
        self.attach();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs a command that must succeed (mount tools: the test needs root, as scripts/test runs);
/// returns its stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (these tests mount file systems: run them as root, as scripts/test does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The exporter with its event store at `store` and the events receiver on.
fn exporter_on(dir: &Path, store: &Path) -> ExporterProcess {
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let exporter = ExporterProcess::start_on_store(
        dir,
        store,
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
    exporter
}

/// Posts `prefix-N` events until three are refused with 503 (a full disk may take a few more
/// first, into the WAL's free pages); returns (acknowledged, refused).
fn post_until_refused(addr: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for n in 0..500 {
        let id = format!("{prefix}-{n}");
        match post(addr, &id) {
            (200, _) => acked.push(id),
            (503, text) => {
                assert!(
                    text.contains("cannot store the events, nothing was recorded; retry later"),
                    "{text}"
                );
                refused.push(id);
                if refused.len() == 3 {
                    return (acked, refused);
                }
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    panic!("the broken disk never refused an event");
}

/// `/metrics` still answers, and counts the refused events as errors (re-encoded at most 1 s after
/// a change).
fn errors_counted(addr: &str, n: f64) {
    wait_until(Duration::from_secs(3), "store errors counted", || {
        let s = Scrape::parse(&http_get(addr, "/metrics", &[]).unwrap().text());
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "api"), ("outcome", "error")],
        ) == n
    });
}

/// Every acknowledged event is in the store, once, and nothing else.
fn stored_once(store: &Path, acked: &[String]) {
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for e in stored_events(store) {
        let id = e["incident"]
            .as_str()
            .unwrap()
            .trim_start_matches("api\u{1f}");
        *stored.entry(id.to_string()).or_default() += 1;
    }
    for id in acked {
        assert_eq!(stored.get(id), Some(&1), "{id}: {stored:?}");
    }
    assert_eq!(stored.len(), acked.len(), "{stored:?}");
}

#[test]
fn a_full_disk_answers_503_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "4m");
    let store = disk.path.join("events.db");
    let exporter = exporter_on(dir.path(), &store);
    let (status, text) = post(&exporter.addr, "before");
    assert_eq!(status, 200, "{text}");
    let mut acked = vec!["before".to_string()];

    let filler = fill(&disk.path);
    let (mut more, mut refused) = post_until_refused(&exporter.addr, "full");
    acked.append(&mut more);
    errors_counted(&exporter.addr, 3.0);

    // Space again: the refused events, sent again (as a sender retries), are recorded.
    std::fs::remove_file(&filler).unwrap();
    for id in &refused {
        let (status, text) = post(&exporter.addr, id);
        assert_eq!(status, 200, "{id} after the disk recovered: {text}");
        assert!(text.contains(r#""recorded":1"#), "{text}");
    }
    acked.append(&mut refused);
    drop(exporter);
    stored_once(&store, &acked);
}

#[test]
fn a_disk_gone_read_only_answers_503_loses_nothing_and_recovers_once_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Ext4::mount(&dir.path().join("disk.img"), &dir.path().join("disk"));
    let store = disk.path.join("events.db");
    let exporter = exporter_on(dir.path(), &store);
    // Acknowledged before the failure: these must survive it (on the disk, not only in the page
    // cache a read-only file system can no longer write back).
    let mut acked: Vec<String> = (0..20).map(|n| format!("before-{n}")).collect();
    for id in &acked {
        let (status, text) = post(&exporter.addr, id);
        assert_eq!(status, 200, "{text}");
    }

    disk.fail();
    let (more, mut refused) = post_until_refused(&exporter.addr, "read-only");
    assert_eq!(
        more,
        Vec::<String>::new(),
        "acknowledged on a read-only disk"
    );
    errors_counted(&exporter.addr, 3.0);
    assert_eq!(
        http_get(&exporter.addr, "/-/healthy", &[]).unwrap().status,
        200
    );

    // Repaired and mounted again: the sender's retries are recorded. Each of the pool's connections
    // to the old mount fails once before it is replaced, so a retry may still meet one.
    disk.repair();
    for id in &refused {
        let mut answers = Vec::new();
        for _ in 0..10 {
            let (status, text) = post(&exporter.addr, id);
            answers.push(status);
            if status == 200 {
                assert!(text.contains(r#""recorded":1"#), "{text}");
                break;
            }
        }
        assert_eq!(
            answers.last(),
            Some(&200),
            "{id} after the repair: {answers:?}\n{}",
            exporter.stderr()
        );
    }
    acked.append(&mut refused);
    drop(exporter);
    stored_once(&store, &acked);
}
