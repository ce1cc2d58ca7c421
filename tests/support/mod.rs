//! Helpers shared by the integration tests and the benches that drive real processes, one module
//! for each kind; here, the project's paths and virtualenv, and process groups. Every service binds
//! 127.0.0.1 on a free port and is stopped when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod alertmanager;
pub mod exporter;
pub mod http;
pub mod mlflow;
pub mod mock_mlflow;
pub mod prometheus;
pub mod scrape;
pub mod tls;

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program of the virtualenv that scripts/test creates (or `MLFLOW_EXPORTER_TEST_VENV`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("MLFLOW_EXPORTER_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_dir().join(".venv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which installs MLflow into .venv (or set MLFLOW_EXPORTER_TEST_VENV)",
        path.display()
    );
    path
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Sends `sig` (e.g. "TERM") to a whole process group.
pub fn kill_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Stops a child started in its own process group: TERM, then KILL after 10 s.
pub fn stop_group(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    kill_group(child.id(), "TERM");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child.id(), "KILL");
    let _ = child.wait();
}
