//! Crash safety of the CI/CD events receiver: 8 clients post incidents while a sync waits on MLflow
//! and the exporter is SIGKILLed, or sent SIGTERM (it must then exit cleanly); after a restart on the
//! same store every acknowledged event is there exactly once and is counted.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::exporter::{stored_events, ExporterProcess};
use crate::support::http::{free_port, http_get, http_post, wait_until, HttpResponse};
use crate::support::scrape::{to_labels, Scrape};
use crate::support::{now_ms, stop_group, write_file};

const TOKEN: &str = "ci-token-crash-K3v";
const THREADS: usize = 8;
const MAX_POSTS: usize = 10_000;

/// The configuration both runs share: the CI/CD events receiver on, with a token, no rate limit.
fn config(dir: &Path) -> PathBuf {
    write_file(
        dir,
        "exporter.yaml",
        // The burst comes from one address as fast as it can: the per-client rate limit is lifted.
        &format!("webhooks:\n  events: {{enabled: true, token: {TOKEN}}}\n  rate_limit: 1000000\n  rate_burst: 1000000\n"),
    )
}

fn wait_healthy(addr: &str, child: &mut Child, log: &Path) {
    wait_until(
        Duration::from_secs(30),
        "the exporter's HTTP server",
        || {
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "exporter exited with {s}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            http_get(addr, "/-/healthy", &[]).is_ok_and(|r| r.status == 200)
        },
    );
}

fn event_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "incident_opened",
        "model": "m",
        "id": id,
        "severity": "s",
        "at": now_ms() / 1000,
    }))
    .unwrap()
}

fn post_event(addr: &str, id: &str) -> std::io::Result<HttpResponse> {
    let auth = format!("Bearer {TOKEN}");
    http_post(
        addr,
        "/api/v1/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &event_body(id),
    )
}

/// Whether an answer is exactly `{"recorded": recorded, "duplicates": duplicates}`.
fn answer_is(body: &[u8], recorded: u64, duplicates: u64) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).ok()
        == Some(serde_json::json!({"recorded": recorded, "duplicates": duplicates}))
}

/// What one client thread did.
#[derive(Default)]
struct ClientLog {
    /// Every id posted (a request that failed may still have reached the server).
    sent: Vec<String>,
    /// Ids answered 200 `{"recorded":1,"duplicates":0}`.
    acked: Vec<String>,
    /// Other answers: (id, status, body, whether the kill had begun).
    other: Vec<(String, u16, String, bool)>,
    /// The error that stopped the thread, and whether the kill had begun by then.
    error: Option<(String, bool)>,
}

fn client(t: usize, addr: String, killing: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> ClientLog {
    let mut log = ClientLog::default();
    let start = Instant::now();
    for n in 0..MAX_POSTS {
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        let id = format!("t{t}-{n}");
        log.sent.push(id.clone());
        match post_event(&addr, &id) {
            Ok(r) if r.status == 200 && answer_is(&r.body, 1, 0) => {
                log.acked.push(id);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => log
                .other
                .push((id, r.status, r.text(), killing.load(Ordering::SeqCst))),
            Err(e) => {
                log.error = Some((e.to_string(), killing.load(Ordering::SeqCst)));
                break;
            }
        }
    }
    log
}

/// The exporter restarted on a given store, stopped (TERM, then KILL) when dropped.
struct Restarted {
    addr: String,
    log: PathBuf,
    child: Child,
}

impl Restarted {
    fn start(dir: &Path, store: &Path, config: &Path, mlflow: &str) -> Restarted {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("exporter-restarted.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"));
        cmd.arg("--web.listen-address")
            .arg(&addr)
            .arg("--storage.path")
            .arg(store)
            .arg("--config.file")
            .arg(config)
            .arg("--mlflow.sync-interval=1h")
            .env("MLFLOW_TRACKING_URI", mlflow)
            .env("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut r = Restarted {
            addr,
            log,
            child: cmd.spawn().expect("restart mlflow-exporter"),
        };
        wait_healthy(&r.addr, &mut r.child, &r.log);
        r
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

#[test]
fn acknowledged_events_survive_a_sigkill_exactly_once() {
    burst_then(Signal::Kill);
}

#[test]
fn a_sigterm_during_a_sync_and_a_burst_exits_cleanly_with_every_acknowledged_event() {
    burst_then(Signal::Term);
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Signal {
    Kill,
    Term,
}

/// Eight clients post incidents while a sync waits on an MLflow that never answers; then the
/// exporter gets `signal`. SIGKILL must kill it, SIGTERM must stop it cleanly within 10 s. Either
/// way, a restart on the same store holds every acknowledged event exactly once.
fn burst_then(signal: Signal) {
    let test_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // Accepts connections (the kernel does) and never answers: the first sync is still waiting on
    // it when the signal comes.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mlflow = format!("http://{}", blackhole.local_addr().unwrap());
    let mut exporter = ExporterProcess::start(
        dir.path(),
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.sync-interval=1h",
        ],
        &[
            ("MLFLOW_TRACKING_URI", &mlflow),
            ("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0"),
        ],
    );
    let stderr_path = exporter.stderr_path.clone();
    wait_healthy(&exporter.addr, &mut exporter.child, &stderr_path);
    let store = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("the exporter's store file");

    // The burst: 8 clients posting unique incidents as fast as they can.
    let killing = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let burst_start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, killing, acked) = (exporter.addr.clone(), killing.clone(), acked.clone());
            std::thread::spawn(move || client(t, addr, killing, acked))
        })
        .collect();
    // Kill once ~300 ms have passed (with something acknowledged) or 200 events are acknowledged.
    while burst_start.elapsed() < Duration::from_secs(5) {
        let n = acked.load(Ordering::SeqCst);
        if n >= 200 || (n > 0 && burst_start.elapsed() >= Duration::from_millis(300)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let acked_at_kill = acked.load(Ordering::SeqCst);
    killing.store(true, Ordering::SeqCst);
    let pid = exporter.child.id();
    let flag = match signal {
        Signal::Kill => "-KILL",
        Signal::Term => "-TERM",
    };
    let killed = Command::new("kill")
        .args([flag, "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success(), "kill {flag} -{pid} failed");
    let mut status = None;
    wait_until(Duration::from_secs(10), "the exporter to exit", || {
        status = exporter.child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    match signal {
        Signal::Kill => assert_eq!(
            status.signal(),
            Some(9),
            "the exporter was not killed by SIGKILL: {status}; log: {}",
            exporter.stderr()
        ),
        Signal::Term => {
            assert!(
                status.success(),
                "SIGTERM: {status}; log: {}",
                exporter.stderr()
            );
            let log = exporter.stderr();
            assert!(log.contains("mlflow-exporter stopped"), "{log}");
        }
    }
    let kill_ms = burst_start.elapsed().as_millis();
    let logs: Vec<ClientLog> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut sent = BTreeSet::new();
    let mut acked_ids = BTreeSet::new();
    for (t, log) in logs.iter().enumerate() {
        sent.extend(log.sent.iter().cloned());
        acked_ids.extend(log.acked.iter().cloned());
        let early: Vec<_> = log.other.iter().filter(|o| !o.3).collect();
        assert!(
            early.is_empty(),
            "thread {t}: answers other than an acknowledgement before the kill: {early:?}"
        );
        for o in &log.other {
            eprintln!("thread {t}: answer during the kill (not acknowledged): {o:?}");
        }
        match &log.error {
            Some((e, true)) => eprintln!("thread {t}: stopped by {e:?}"),
            Some((e, false)) => panic!("thread {t}: connection error before the kill: {e}"),
            None => panic!("thread {t} never saw the exporter die"),
        }
    }
    assert_eq!(acked_ids.len(), acked.load(Ordering::SeqCst));
    assert!(
        !acked_ids.is_empty(),
        "nothing acknowledged before the kill"
    );

    // Restart on the same store.
    let mut restarted = Restarted::start(dir.path(), &store, &config, &mlflow);
    let labels = [("model", "m"), ("severity", "s")];
    let mut scrape = None;
    wait_until(
        Duration::from_secs(30),
        "the loaded history in /metrics",
        || {
            let Ok(r) = http_get(&restarted.addr, "/metrics", &[]) else {
                return false;
            };
            let s = Scrape::parse(&r.text());
            let found = s
                .family("mlflow_incidents_total")
                .contains_key(&to_labels(&labels));
            scrape = Some(s);
            found
        },
    );
    let scrape = scrape.unwrap();
    let total = scrape.get("mlflow_incidents_total", &labels);
    let open = scrape.get("mlflow_incidents_open", &labels);

    // An acknowledged event again: a duplicate, recorded nothing.
    let again = acked_ids.iter().next().unwrap();
    let r = post_event(&restarted.addr, again).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        answer_is(&r.body, 0, 1),
        "posting {again} again after the restart: {}",
        r.text()
    );
    stop_group(&mut restarted.child);
    let restarted_log = restarted.stderr();

    // The store: every acknowledged id exactly once, nothing that was never sent.
    let events = stored_events(&store);
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["kind"], "incident_opened", "unexpected event {e}");
        assert_eq!(e["source"], "api", "unexpected event {e}");
        let id = e["incident"]
            .as_str()
            .and_then(|i| i.strip_prefix("api\u{1f}"))
            .unwrap_or_else(|| panic!("no incident id in {e}"));
        *stored.entry(id.to_string()).or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids stored more than once: {twice:?}");
    let lost: Vec<_> = acked_ids
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged ids lost by the crash: {lost:?}",
        lost.len()
    );
    let invented: Vec<_> = stored.keys().filter(|id| !sent.contains(*id)).collect();
    assert!(
        invented.is_empty(),
        "ids stored but never sent: {invented:?}"
    );
    let unacked_stored = stored.len() - acked_ids.len();

    eprintln!(
        "sent {}, acknowledged {} ({} when the kill began, kill at {kill_ms} ms), stored {} \
         ({unacked_stored} stored without an acknowledgement), test took {:?}",
        sent.len(),
        acked_ids.len(),
        acked_at_kill,
        stored.len(),
        test_start.elapsed()
    );

    // The restarted exporter counted exactly what is stored.
    assert_eq!(
        total,
        stored.len() as f64,
        "mlflow_incidents_total after the restart; log: {restarted_log}"
    );
    assert_eq!(
        open,
        stored.len() as f64,
        "mlflow_incidents_open after the restart"
    );
    assert!(total >= acked_ids.len() as f64);
}
