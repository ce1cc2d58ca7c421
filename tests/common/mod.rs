//! Helpers shared by the integration tests: a real MLflow server from the project's virtualenv, the seed
//! script with its known history, the exporter binary, a plain HTTP client and a parser for scrapes.
//! Every service binds 127.0.0.1 on a free port and is stopped when its handle drops.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `f` every 100 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.0 GET: status, headers (lower-case names) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, headers, b"")
}

/// A minimal HTTP/1.0 POST of a body.
pub fn http_post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    http_request(addr, "POST", path, headers, body)
}

fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413, say) before reading all of a large body: keep what it said.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Sends `sig` (e.g. "TERM") to a whole process group.
fn kill_group(pid: u32, sig: &str) {
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

/// A real MLflow tracking server with a sqlite store in a temporary folder.
pub struct MlflowServer {
    pub url: String,
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
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

    /// The `mlflow server` process, leader of the process group its workers run in.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// The example configuration (a rate card and one extra label), which the seeded figures assume.
pub fn example_config() -> PathBuf {
    project_dir().join("deploy/config.example.yaml")
}

pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
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

/// `promtool check metrics` on a scrape: its output (empty when the lint passes) and exit code.
pub fn promtool_check_metrics(scrape: &str) -> (String, Option<i32>) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package prometheus (scripts/test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code(),
    )
}

/// What a publisher serves now, after `promtool check metrics` accepted it.
pub fn scrape(publisher: &mlflow_exporter::exposition::Publisher) -> Scrape {
    let text = String::from_utf8(publisher.current().text().to_vec()).unwrap();
    let (lint, code) = promtool_check_metrics(&text);
    assert_eq!(
        (lint.as_str(), code),
        ("", Some(0)),
        "promtool check metrics"
    );
    Scrape::parse(&text)
}

/// Labels of one series, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// A parsed text exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    /// Sample name → (labels → value).
    pub samples: BTreeMap<String, BTreeMap<Labels, f64>>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, BTreeMap<Labels, f64>> = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(i) => {
                    let (labels, end) = parse_labels(&line[i + 1..]);
                    (&line[..i], labels, &line[i + 1 + end..])
                }
                None => {
                    let i = line.find(' ').expect("sample without value");
                    (&line[..i], Labels::new(), &line[i..])
                }
            };
            let value = rest.split_whitespace().next().expect("value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let prev = samples
                .entry(name.to_string())
                .or_default()
                .insert(labels, value);
            assert!(prev.is_none(), "duplicate series {line:?}");
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of one series; panics naming the series present when it is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want = to_labels(labels);
        self.samples
            .get(name)
            .and_then(|s| s.get(&want))
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no series {name}{want:?}; present: {:?}",
                    self.samples.get(name).map(|s| s.keys().collect::<Vec<_>>())
                )
            })
    }

    /// Every series of one sample name.
    pub fn family(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples.get(name).cloned().unwrap_or_default()
    }

    /// The samples of every counter and histogram (by their `# TYPE` lines): a histogram's
    /// buckets, sum and count each.
    pub fn counter_samples(&self) -> BTreeMap<(String, Labels), f64> {
        let mut names: Vec<String> = Vec::new();
        for line in self.text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("#") && words.next() == Some("TYPE") {
                match (words.next(), words.next()) {
                    (Some(name), Some("counter")) => names.push(name.to_string()),
                    (Some(name), Some("histogram")) => {
                        for suffix in ["_bucket", "_sum", "_count"] {
                            names.push(format!("{name}{suffix}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        names
            .iter()
            .flat_map(|n| {
                self.family(n)
                    .into_iter()
                    .map(move |(labels, v)| ((n.clone(), labels), v))
            })
            .collect()
    }
}

/// Asserts that no counter or histogram sample of `before` is missing from `after` or lower
/// there, as Prometheus' `increase()` needs; samples whose name `skip` picks are left out.
/// Returns how many samples were compared.
pub fn assert_counters_kept(before: &Scrape, after: &Scrape, skip: impl Fn(&str) -> bool) -> usize {
    let after = after.counter_samples();
    let mut problems = Vec::new();
    let mut compared = 0;
    for ((name, labels), v) in before.counter_samples() {
        if skip(&name) {
            continue;
        }
        compared += 1;
        match after.get(&(name.clone(), labels.clone())) {
            None => problems.push(format!("{name}{labels:?} vanished (was {v})")),
            Some(w) if *w < v => problems.push(format!("{name}{labels:?} went back: {v} -> {w}")),
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {compared}:\n{}",
        problems.len(),
        problems.join("\n")
    );
    compared
}

/// The exporter's own counters of this process (requests made, sync errors): a restart starts
/// them over, as every exporter's, which `increase()` reads as the reset it is.
pub fn process_counter(name: &str) -> bool {
    (name.starts_with("mlflow_exporter_") && !name.starts_with("mlflow_exporter_corrections"))
        || name.starts_with("process_")
}

pub fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `a="x",b="y"}`; returns the labels and the byte index just past the `}`.
fn parse_labels(s: &str) -> (Labels, usize) {
    let mut labels = Labels::new();
    let mut chars = s.char_indices();
    let mut next = || chars.next().expect("unterminated label set");
    loop {
        let mut name = String::new();
        loop {
            match next() {
                (i, '}') => return (labels, i + 1),
                (_, '=') => break,
                (_, ',') => {}
                (_, c) => name.push(c),
            }
        }
        assert_eq!(next().1, '"', "label value must be quoted");
        let mut value = String::new();
        loop {
            match next() {
                (_, '\\') => value.push(match next().1 {
                    'n' => '\n',
                    c => c,
                }),
                (_, '"') => break,
                (_, c) => value.push(c),
            }
        }
        labels.insert(name, value);
    }
}

/// Asserts that a family holds exactly these series, with values equal to within 1e-9 relative
/// (money is a product of floats; everything else is an exact integer or decimal).
pub fn assert_family(scrape: &Scrape, name: &str, expected: &[(&[(&str, &str)], f64)]) {
    let got = scrape.family(name);
    let want: BTreeMap<Labels, f64> = expected.iter().map(|(l, v)| (to_labels(l), *v)).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing series {missing:?}, unexpected series {extra:?}"
    );
    for (labels, w) in &want {
        let g = got[labels];
        let close = if *w == 0.0 {
            g == 0.0
        } else {
            ((g - w) / w).abs() < 1e-9
        };
        assert!(close, "{name}{labels:?} = {g}, want {w}");
    }
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

/// A real Alertmanager (Debian `prometheus-alertmanager`) with `config` (YAML), clustering off.
pub struct Alertmanager {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start(config: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(dir.path(), "alertmanager.yml", config);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("prometheus-alertmanager not found: install the Debian package prometheus-alertmanager (scripts/test does)");
        let am = Alertmanager {
            addr,
            child,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "Alertmanager ready", || {
            http_get(&am.addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200)
        });
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

pub mod mock_mlflow;
pub mod prometheus;
pub mod tls;

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
