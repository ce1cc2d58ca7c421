//! A real MLflow from the project's virtualenvs (MLflow 3 in .venv, the last MLflow 2 in
//! .venv-mlflow2): the tracking server with its seed script and known history, and a model server
//! of a tiny pyfunc model logged to it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::http::{free_port, http_get, wait_until};
use super::{kill_group, project_dir, stop_group, venv_bin};

/// A real MLflow tracking server with a sqlite store in a temporary folder.
pub struct MlflowServer {
    pub url: String,
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// The `mlflow server` process, leader of the process group its workers run in.
    pub child: Child,
    /// The virtualenv it runs from; its Python seeds it.
    venv: PathBuf,
}

/// The virtualenv of the last MLflow 2 (scripts/test installs it into .venv-mlflow2).
pub fn venv2() -> PathBuf {
    let venv = std::env::var_os("MLFLOW_EXPORTER_TEST_VENV2")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_dir().join(".venv-mlflow2"));
    assert!(
        venv.join("bin/mlflow").exists(),
        "{} has no MLflow 2: run scripts/test, which installs it (or set MLFLOW_EXPORTER_TEST_VENV2)",
        venv.display()
    );
    venv
}

impl MlflowServer {
    pub fn start() -> MlflowServer {
        MlflowServer::start_with_env(&[])
    }

    /// A server with extra environment (e.g. MLflow's webhook settings).
    pub fn start_with_env(env: &[(&str, &str)]) -> MlflowServer {
        MlflowServer::start_on(tempfile::tempdir().unwrap(), 1, env)
    }

    /// A server on `dir/mlflow.db` (created empty by MLflow if missing, or a store loaded beforehand,
    /// as benches/mlflow_real.rs does) with `workers` worker processes; its log is `dir/mlflow.log`.
    pub fn start_on(dir: tempfile::TempDir, workers: u32, env: &[(&str, &str)]) -> MlflowServer {
        MlflowServer::start_with(dir, workers, &[], env)
    }

    /// The last MLflow 2 release, one worker, from its own virtualenv ([`venv2`]).
    pub fn start_mlflow2() -> MlflowServer {
        let venv = venv2();
        MlflowServer::start_from(&venv, tempfile::tempdir().unwrap(), 1, &[], &[])
    }

    /// As [`MlflowServer::start_on`], with more arguments to `mlflow server` (e.g.
    /// `--enable-workspaces`).
    pub fn start_with(
        dir: tempfile::TempDir,
        workers: u32,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> MlflowServer {
        let venv = venv_bin("mlflow")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        MlflowServer::start_from(&venv, dir, workers, args, env)
    }

    fn start_from(
        venv: &Path,
        dir: tempfile::TempDir,
        workers: u32,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> MlflowServer {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("mlflow.log")).unwrap();
        let mut cmd = Command::new(venv.join("bin/mlflow"));
        cmd.args(["server", "--backend-store-uri"])
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                &workers.to_string(),
            ])
            .args(args)
            // On 2 cores the job-runner processes only slow the tests down.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            // Its workers (gunicorn, uvicorn) are found on PATH: this virtualenv's.
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    venv.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start mlflow server");
        let mut server = MlflowServer {
            url: format!("http://{addr}"),
            addr,
            dir,
            child,
            venv: venv.to_path_buf(),
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = http_get(&server.addr, "/health", &[]) {
                if r.status == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("mlflow server exited with {status}: {}", server.log());
            }
            if start.elapsed() > Duration::from_secs(90) {
                server.stop();
                panic!("mlflow server not healthy within 90 s: {}", server.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mlflow.log")).unwrap_or_default()
    }

    /// Runs `script` with the MLflow SDK against this server, warnings silenced and traces
    /// logged before each traced call returns (so that the script can read them back, or give
    /// feedback on them); its standard output.
    pub fn python(&self, script: &str) -> String {
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", script])
            .env("MLFLOW_TRACKING_URI", &self.url)
            .env("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
            .env("PYTHONWARNINGS", "ignore")
            .output()
            .expect("run python");
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed
    }

    /// Runs tests/fixtures/seed.py against this server (`initial` or `incremental`), times relative to `t_ms`.
    pub fn seed(&self, t_ms: i64, phase: &str) {
        let out = Command::new(self.venv.join("bin/python"))
            .arg(project_dir().join("tests/fixtures/seed.py"))
            .args(["--now-ms", &t_ms.to_string(), "--state"])
            .arg(self.dir.path().join("seed-state.json"))
            .arg(phase)
            .env("MLFLOW_TRACKING_URI", &self.url)
            .output()
            .expect("run seed.py");
        assert!(
            out.status.success(),
            "seed.py {phase} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What seed.py recorded: experiment and run ids, and each version's creation time
    /// (`versions["model/N"]`, ms), which MLflow stamps itself.
    pub fn seed_state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("seed-state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn stop(&mut self) {
        stop_group(&mut self.child);
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_with_venv() -> String {
    let bin = venv_bin("python").parent().unwrap().to_path_buf();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs tests/fixtures/pyfunc_model.py against `tracking_uri`: logs a tiny pyfunc model (a row's
/// prediction is the sum of the row), registers it as `model` and points `alias` at that version.
/// Returns what the script printed: `run_id`, `model_uri` (`models:/MODEL@ALIAS`) and `version`.
pub fn log_pyfunc_model(tracking_uri: &str, model: &str, alias: &str) -> serde_json::Value {
    let out = Command::new(venv_bin("python"))
        .arg(project_dir().join("tests/fixtures/pyfunc_model.py"))
        .args([model, alias])
        .env("MLFLOW_TRACKING_URI", tracking_uri)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .output()
        .expect("run pyfunc_model.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pyfunc_model.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // MLflow prints links to the run on stdout too: the answer is the last line.
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    serde_json::from_str(last.unwrap_or_default())
        .unwrap_or_else(|e| panic!("pyfunc_model.py printed no JSON ({e}): {stdout}"))
}

/// A real model server (`mlflow models serve`, local environment) of a model of a tracking server,
/// in its own process group. It can be stopped and started again on the same port.
pub struct ModelServer {
    pub addr: String,
    pub url: String,
    model_uri: String,
    tracking_uri: String,
    log_path: PathBuf,
    child: Option<Child>,
}

impl ModelServer {
    /// Serves `model_uri` on a free port and waits until it answers `GET /ping`.
    pub fn start(dir: &Path, tracking_uri: &str, model_uri: &str) -> ModelServer {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut server = ModelServer {
            url: format!("http://{addr}"),
            log_path: dir.join(format!("model-server-{}.log", free_port())),
            addr,
            model_uri: model_uri.into(),
            tracking_uri: tracking_uri.into(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again, on the same port) and waits until it answers `GET /ping` with 200.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the model server is running");
        let port = self.addr.rsplit(':').next().unwrap().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(venv_bin("mlflow"));
        cmd.args(["models", "serve", "-m", &self.model_uri])
            .args(["--env-manager", "local", "-h", "127.0.0.1", "-p", &port])
            .args(["-w", "1"])
            .env("MLFLOW_TRACKING_URI", &self.tracking_uri)
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            // It runs the venv's uvicorn.
            .env("PATH", path_with_venv())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = self
            .child
            .insert(cmd.spawn().expect("start mlflow models serve"));
        let limit = Duration::from_secs(90);
        let start = Instant::now();
        loop {
            if http_get(&self.addr, "/ping", &[]).is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mlflow models serve exited with {status}: {}", self.log());
            }
            if start.elapsed() > limit {
                self.stop();
                panic!(
                    "model server not answering within {limit:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the whole process group (TERM, then KILL), and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
            // The leader may exit before its uvicorn child: leave nothing of the group behind.
            kill_group(child.id(), "KILL");
        }
        wait_until(
            Duration::from_secs(15),
            "the model server's port closed",
            || TcpStream::connect(&self.addr).is_err(),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
            kill_group(child.id(), "KILL");
        }
    }
}
