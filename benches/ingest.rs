//! Delivery events in and back: webhook ingestion through the exporter's own HTTP server (built as
//! `app::run` builds it, on 2 worker threads, over a fresh store) under 16 keep-alive clients posting
//! unique `incident_opened` events for 10 s from this process (target: at least 2 000 acknowledged,
//! i.e. committed, events/s; clients and server share this machine's two cores), and the start-up
//! rebuild, `Pipeline::open` over a store of 1 000 000 events in a new process as at start-up
//! (target: under 5 s). `cargo bench --bench ingest`.

mod rt;

use rt::runtime;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{Secret, Settings};
use mlflow_exporter::delivery::{Bounds, Delivery, Event, Kind, Source, VersionTimes};
use mlflow_exporter::server::{self, AppState};
use mlflow_exporter::store::EventStore;

const TOKEN: &str = "bench-token-5Rq";
const CLIENTS: usize = 16;
const LOAD: Duration = Duration::from_secs(10);
/// Bounds each client's loop besides the deadline (far above what 10 s can reach).
const MAX_PER_CLIENT: usize = 200_000;
const EVENTS: usize = 1_000_000;
const BATCH: usize = 10_000;
const MODELS: usize = 200;
const ALIASES: [&str; 3] = ["champion", "production", "prod"];
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    // Validation wants a tracking server; nothing listens there and no cycle runs.
    s.mlflow.tracking_uri = "http://127.0.0.1:9".into();
    s.storage.path = dir.join("events.db");
    s.webhooks.events.enabled = true;
    s.webhooks.events.token = Some(Secret::new(TOKEN));
    // The load comes from one address: measure the receiver, not its per-client rate limit.
    s.webhooks.rate_limit = u32::MAX;
    s.webhooks.rate_burst = u32::MAX;
    s.validate().expect("valid settings");
    s
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What one client saw.
#[derive(Default)]
struct Load {
    acked: u64,
    refused: u64,
    latencies_us: Vec<u32>,
}

/// Posts unique incidents one after another on one keep-alive connection until `deadline`.
async fn client(url: String, c: usize, deadline: Instant) -> Load {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut load = Load::default();
    for n in 0..MAX_PER_CLIENT {
        if Instant::now() >= deadline {
            break;
        }
        let body = serde_json::json!({
            "type": "incident_opened",
            "model": "m",
            "id": format!("bench-{c}-{n}"),
            "severity": "s",
        });
        let t = Instant::now();
        let ok = match http.post(&url).bearer_auth(TOKEN).json(&body).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["recorded"] == 1),
            _ => false,
        };
        load.latencies_us
            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if ok {
            load.acked += 1;
        } else {
            load.refused += 1;
        }
    }
    load
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

/// Webhook ingestion: returns the table's rows.
fn ingestion(dir: &Path) -> Vec<String> {
    let settings = settings(dir);
    let rt = runtime(2);
    let pipeline = rt.block_on(Pipeline::open(&settings, now_ms())).unwrap();
    // As `app::run` builds the receivers and the server's state.
    let ingest = pipeline.ingest(&settings);
    let state = AppState {
        publisher: pipeline.publisher.clone(),
        ready: pipeline.ready.clone(),
        telemetry_path: settings.web.telemetry_path.clone(),
        ingest: Some(ingest),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/api/v1/events", listener.local_addr().unwrap());
    let mut stop = stop_rx;
    let served = rt.spawn(server::serve(
        listener,
        state,
        server::web::Web::load(None, Vec::new(), None).unwrap(),
        server::web::Limits::default(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));

    // The load generator: its own runtime, same process, same two cores.
    let load_rt = runtime(2);
    let start = Instant::now();
    let deadline = start + LOAD;
    let loads: Vec<Load> = load_rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client(url.clone(), c, deadline)))
            .collect();
        let mut loads = Vec::with_capacity(CLIENTS);
        for t in tasks {
            loads.push(t.await.unwrap());
        }
        loads
    });
    let elapsed = start.elapsed().as_secs_f64();
    drop(load_rt);
    let _ = stop_tx.send(true);
    rt.block_on(served).unwrap().unwrap();

    let acked: u64 = loads.iter().map(|l| l.acked).sum();
    let refused: u64 = loads.iter().map(|l| l.refused).sum();
    let mut lat: Vec<u32> = loads.into_iter().flat_map(|l| l.latencies_us).collect();
    lat.sort_unstable();
    let store = pipeline.recorder.store().clone();
    let stored = rt.block_on(store.load()).unwrap();
    let stored_incidents = stored
        .iter()
        .filter(|e| e.kind == Kind::IncidentOpened && e.source == Source::Api)
        .count();
    rt.block_on(store.close());
    vec![
        format!(
            "| webhook ingestion, POST /api/v1/events, {CLIENTS} keep-alive clients 10 s, server on 2 workers | {:.0} acknowledged events/s ({acked} in {elapsed:.1} s, {refused} not acknowledged) | ≥ 2 000 events/s |",
            acked as f64 / elapsed
        ),
        format!(
            "| webhook latency (post to committed answer) | p50 {:.2} ms, p99 {:.2} ms | – |",
            percentile_ms(&lat, 0.50),
            percentile_ms(&lat, 0.99)
        ),
        format!(
            "| events in the store after the run (EventStore::load) | {} ({}) | = acknowledged |",
            stored.len(),
            if stored.len() as u64 == acked && stored_incidents == stored.len() {
                "equal"
            } else {
                "DIFFERENT"
            }
        ),
    ]
}

/// A history shaped like a busy registry over the last 300 days: deployments of 200 models × 3
/// serving aliases (versions rising, about one in ten a rollback, a few alias deletions, first
/// sights as baselines) and incidents opened and later resolved, named by a `Delivery` fed every
/// event so the dedup keys are those the exporter itself would give.
struct History {
    rng: fastrand::Rng,
    delivery: Delivery,
    latest: HashMap<(usize, usize), u32>,
    open: VecDeque<(String, Source, usize, &'static str)>,
    incidents: u64,
    at_ms: i64,
    step_ms: i64,
}

impl History {
    fn new(bounds: Bounds, now_ms: i64) -> History {
        let span = 300 * DAY_MS;
        History {
            rng: fastrand::Rng::with_seed(7),
            delivery: Delivery::new(bounds),
            latest: HashMap::new(),
            open: VecDeque::new(),
            incidents: 0,
            at_ms: now_ms - span - DAY_MS,
            step_ms: span / EVENTS as i64,
        }
    }

    fn next(&mut self) -> Event {
        self.at_ms += self.step_ms;
        let at = self.at_ms;
        let r = self.rng.u32(0..100);
        let e = if r < 30 {
            self.incident(at)
        } else {
            self.deployment(at, r < 31)
        };
        self.delivery.apply(&e);
        e
    }

    fn incident(&mut self, at: i64) -> Event {
        // Resolve the oldest open one half of the time (always when many are open).
        if !self.open.is_empty() && (self.open.len() > 50 || self.rng.bool()) {
            let (id, source, m, sev) = self.open.pop_front().unwrap();
            return Event::incident(
                Kind::IncidentResolved,
                source,
                &id,
                &format!("model-{m}"),
                sev,
                at,
            );
        }
        self.incidents += 1;
        let id = format!("inc-{}", self.incidents);
        let source = if self.rng.bool() {
            Source::Alertmanager
        } else {
            Source::Api
        };
        let m = self.rng.usize(0..MODELS);
        let sev = ["page", "ticket", "sev1"][self.rng.usize(0..3)];
        let e = Event::incident(
            Kind::IncidentOpened,
            source,
            &id,
            &format!("model-{m}"),
            sev,
            at,
        );
        self.open.push_back((id, source, m, sev));
        e
    }

    fn deployment(&mut self, at: i64, mut delete: bool) -> Event {
        // At most two tries: a deletion needs a target that serves something, else it deploys.
        for _ in 0..2 {
            let (m, a) = (self.rng.usize(0..MODELS), self.rng.usize(0..ALIASES.len()));
            let (model, alias) = (format!("model-{m}"), ALIASES[a]);
            let source = if self.rng.u8(0..4) == 0 {
                Source::MlflowWebhook
            } else {
                Source::Poll
            };
            let serving = self.delivery.serving(&model, alias);
            if delete {
                if let Some(e) = self.delivery.deletion(source, &model, alias, at) {
                    return e;
                }
                delete = false;
                continue;
            }
            let latest = self.latest.entry((m, a)).or_insert(0);
            let (kind, version) = match serving {
                None if *latest == 0 => {
                    *latest = self.rng.u32(1..6);
                    (Kind::Baseline, *latest)
                }
                Some(v) if v > 1 && self.rng.u8(0..10) == 0 => (Kind::Deployment, v - 1),
                _ => {
                    *latest += 1;
                    (Kind::Deployment, *latest)
                }
            };
            let created = at - self.rng.i64(HOUR_MS..7 * DAY_MS);
            let end = created - self.rng.i64(60_000..6 * HOUR_MS);
            let times = VersionTimes {
                run_start_ms: Some(end - self.rng.i64(600_000..12 * HOUR_MS)),
                run_end_ms: Some(end),
                created_ms: Some(created),
                team: None,
            };
            if let Some(e) = self
                .delivery
                .change(kind, source, &model, alias, version, at, times)
            {
                return e;
            }
        }
        unreachable!("a new or lower version is always a change")
    }
}

/// Set in the child processes the rebuild is measured in: what to measure, and where the store is.
const CHILD: &str = "INGEST_BENCH_CHILD";
const CHILD_DIR: &str = "INGEST_BENCH_DIR";

/// Deployments, rollbacks, incidents opened and open: what the fold must reproduce.
fn figures(d: &Delivery) -> [u64; 4] {
    [
        d.figures.values().map(|f| f.deployments).sum(),
        d.figures.values().map(|f| f.rollbacks).sum(),
        d.incidents.values().map(|f| f.opened).sum(),
        d.incidents.values().map(|f| f.open).sum(),
    ]
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// In a child process, as a start-up is: `open` times `Pipeline::open`; `parts` times `load()` and
/// the fold on their own. Prints the figures on one line for the parent.
fn child(what: &str, dir: &Path) {
    let settings = settings(dir);
    let rt = runtime(2);
    if what == "open" {
        let t = Instant::now();
        let pipeline = rt.block_on(Pipeline::open(&settings, now_ms())).unwrap();
        let open_s = t.elapsed().as_secs_f64();
        let (events, f) = rt.block_on(async {
            let d = pipeline.recorder.lock().await;
            (d.events, figures(&d))
        });
        println!(
            "{open_s} {} {events} {} {} {} {}",
            peak_rss_mib(),
            f[0],
            f[1],
            f[2],
            f[3]
        );
        rt.block_on(pipeline.recorder.store().close());
    } else {
        let store = rt
            .block_on(EventStore::open(&settings.storage.path))
            .unwrap();
        let t = Instant::now();
        let loaded = rt.block_on(store.load()).unwrap();
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut folded = Delivery::new(Bounds::new(&settings.delivery));
        for e in &loaded {
            folded.apply(e);
        }
        println!("{load_s} {}", t.elapsed().as_secs_f64());
        rt.block_on(store.close());
    }
}

/// Runs [`child`] in a new process of this program (at most 2 minutes); returns its figures.
fn in_child(what: &str, dir: &Path) -> Vec<f64> {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, what)
        .env(CHILD_DIR, dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..1_200 {
        if c.try_wait().unwrap().is_some() {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "child {what} failed");
            return String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("child {what} took over 2 minutes");
}

/// Start-up rebuild: returns the table's rows.
fn rebuild(dir: &Path) -> Vec<String> {
    let settings = settings(dir);
    let rt = runtime(2);
    let mut history = History::new(Bounds::new(&settings.delivery), now_ms());
    let store = rt
        .block_on(EventStore::open(&settings.storage.path))
        .unwrap();
    let t = Instant::now();
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for _ in 0..EVENTS / BATCH {
        let batch: Vec<Event> = (0..BATCH).map(|_| history.next()).collect();
        for e in &batch {
            *kinds.entry(e.kind.as_str()).or_default() += 1;
        }
        let added = rt.block_on(store.append(&batch, history.at_ms)).unwrap();
        assert_eq!(added.len(), batch.len(), "dedup keys collided");
    }
    let write_s = t.elapsed().as_secs_f64();
    rt.block_on(store.close());
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let db = &settings.storage.path;
    let (db_bytes, wal_bytes) = (size(db), size(&db.with_extension("db-wal")));

    // The measured part: what start-up does before serving, each time in a new process (the page
    // cache is warm from the writes).
    let expected: Vec<f64> = figures(&history.delivery).map(|x| x as f64).to_vec();
    let runs: Vec<Vec<f64>> = (0..3).map(|_| in_child("open", dir)).collect();
    let same = runs
        .iter()
        .all(|r| r[2] == EVENTS as f64 && r[3..] == expected[..]);
    let mut open_s: Vec<f64> = runs.iter().map(|r| r[0]).collect();
    open_s.sort_by(|a, b| a.total_cmp(b));
    let rss = runs.iter().map(|r| r[1]).fold(0.0, f64::max);
    let parts = in_child("parts", dir);

    let share = |k: &str| kinds.get(k).copied().unwrap_or(0);
    vec![
        format!(
            "| write the history: {EVENTS} events ({} deployments, {} baselines, {} alias deletions, {} incidents opened, {} resolved), append in batches of {BATCH} | {write_s:.1} s | – |",
            share("deployment"),
            share("baseline"),
            share("alias_deleted"),
            share("incident_opened"),
            share("incident_resolved"),
        ),
        format!(
            "| database file | {:.0} MiB (+ {:.0} MiB WAL) | – |",
            db_bytes as f64 / (1 << 20) as f64,
            wal_bytes as f64 / (1 << 20) as f64
        ),
        format!(
            "| start-up rebuild: Pipeline::open (open, purge, load, fold) of {EVENTS} events in a new process ({}) | {:.2} s (median of 3: {:.2}, {:.2}, {:.2} s) | < 5 s |",
            if same { "figures match the writer's" } else { "figures DIFFER from the writer's" },
            open_s[1],
            open_s[0],
            open_s[1],
            open_s[2]
        ),
        format!("| peak memory of that start-up (VmHWM) | {rss:.0} MiB | – |"),
        format!(
            "| rebuild parts (another new process): EventStore::load(), fold into a Delivery | {:.2} s, {:.2} s | – |",
            parts[0], parts[1]
        ),
    ]
}

fn main() {
    if let Ok(what) = std::env::var(CHILD) {
        let dir = std::env::var(CHILD_DIR).expect("the store's directory");
        child(&what, Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rows = ingestion(&dir.path().join("ingest"));
    rows.extend(rebuild(&dir.path().join("rebuild")));
    println!("| figure | value | target |");
    println!("|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
