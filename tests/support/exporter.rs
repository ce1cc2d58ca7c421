//! The exporter binary: run to its end, or started as a server on a free port and its own SQLite
//! store, with the example configuration the seeded figures assume, and the events it stored.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{free_port, http_get, HttpResponse};
use super::scrape::Scrape;
use super::{project_dir, stop_group};

/// The example configuration (a rate card and one extra label), which the seeded figures assume.
pub fn example_config() -> PathBuf {
    project_dir().join("deploy/config.example.yaml")
}

/// Runs the binary to its end: exit code, stdout, stderr.
pub fn run_exporter(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"))
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The exporter binary, started in its own process group; stderr goes to a file.
pub struct ExporterProcess {
    pub addr: String,
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl ExporterProcess {
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ExporterProcess {
        let store = dir.join(format!("events-{}.db", free_port()));
        ExporterProcess::start_on_store(dir, &store, args, env)
    }

    /// As [`ExporterProcess::start`], on a given SQLite store (e.g. the one of an earlier run).
    pub fn start_on_store(
        dir: &Path,
        store: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ExporterProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let stderr_path = dir.join(format!("exporter-{}.log", free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"));
        cmd.arg("--web.listen-address")
            .arg(&addr)
            .arg("--storage.path")
            .arg(store)
            .args(args)
            .env_remove("MLFLOW_TRACKING_URI")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        ExporterProcess {
            addr,
            child: cmd.spawn().expect("start mlflow-exporter"),
            stderr_path,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(&self.addr, path, &[])
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log: {}", self.stderr()))
    }

    pub fn scrape(&self) -> Scrape {
        Scrape::parse(&self.get("/metrics").text())
    }

    pub fn wait_ready(&mut self) {
        let limit = Duration::from_secs(60);
        let start = Instant::now();
        loop {
            if let Ok(r) = http_get(&self.addr, "/-/ready", &[]) {
                if r.status == 200 {
                    return;
                }
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("exporter exited with {s}: {}", self.stderr());
            }
            assert!(
                start.elapsed() < limit,
                "exporter not ready in {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Stored events, via `mlflow-exporter events`.
pub fn stored_events(store: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"))
        .args(["events", "--storage.path", store.to_str().unwrap()])
        .env("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
