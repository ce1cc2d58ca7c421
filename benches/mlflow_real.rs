//! The exporter against a real MLflow (the project's virtualenv, SQLite store) bulk-loaded with 100 000
//! runs, 500 models and 5 000 versions by benches/baseline/load_mlflow.py: the download-only floor
//! against the full sync, incremental cycles (nothing changed, 100 runs changed), the Python baseline of
//! benches/baseline/exporter.py on the same server, and the release binary's idle CPU between cycles.
//! Prints markdown rows with targets, met or not. `cargo bench --bench mlflow_real`
//! (`MLFLOW_REAL_RUNS=5000` for a quick check).

mod floor;
mod heap;
mod procfs;
// The bench starts MLflow with the tests' helpers; it needs only a few of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;
use procfs::{cpu_seconds, stat_fields};
mod rt;

use rt::runtime;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heap::{mib_of, LIVE, PEAK};
use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::Settings;
use support::http::{free_port, http_get};
use support::mlflow::MlflowServer;
use support::{now_ms, project_dir, venv_bin};

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// Samples the live heap every 2 ms on a thread of its own, to tell which phase of a cycle its peak
/// falls in.
struct LiveSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, usize)>>,
}

impl LiveSampler {
    fn start() -> LiveSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::with_capacity(1 << 16);
            while !flag.load(Ordering::Relaxed) {
                samples.push((
                    started.elapsed().as_secs_f64(),
                    LIVE.load(Ordering::Relaxed),
                ));
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        });
        LiveSampler { stop, thread }
    }

    /// Peaks before and after `split` seconds from the start.
    fn peaks(self, split: f64) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap();
        let peak = |f: &dyn Fn(f64) -> bool| {
            samples
                .iter()
                .filter(|(t, _)| f(*t))
                .map(|(_, b)| *b)
                .max()
                .unwrap_or(0)
        };
        (peak(&|t| t < split), peak(&|t| t >= split))
    }
}

/// The 1-minute load average: the machine is shared, and MLflow's answers slow down with it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

const EXPERIMENTS: usize = 100;
/// Bounds on the child programs: the load, one `--change`, the baseline's full read.
const LOAD_LIMIT: Duration = Duration::from_secs(20 * 60);
const BASELINE_LIMIT: Duration = Duration::from_secs(40 * 60);
/// The idle binary's first full sync must be done by then.
const READY_LIMIT: Duration = Duration::from_secs(20 * 60);
const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// Nothing-changed cycles measured per row; the row shows their median.
const IDLE_CYCLES: usize = 5;
/// The live processes of a process group (MLflow's CLI, uvicorn and its workers).
fn group_pids(pgrp: u32) -> Vec<String> {
    let pgrp = pgrp.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| stat_fields(p).is_some_and(|f| f.get(2) == Some(&pgrp)))
        .collect()
}

/// CPU seconds of every live process of a group: the MLflow server's side of a measurement.
fn group_cpu(pgrp: u32) -> f64 {
    group_pids(pgrp).iter().map(|p| cpu_seconds(p)).sum()
}

/// CPU seconds of each live process of a group, by pid.
fn group_cpu_by_pid(pgrp: u32) -> HashMap<String, f64> {
    group_pids(pgrp)
        .into_iter()
        .map(|p| {
            let c = cpu_seconds(&p);
            (p, c)
        })
        .collect()
}

/// How a group's CPU between two readings split over its processes, largest first (those that used
/// any): shows whether both of MLflow's workers answered.
fn split(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let mut d: Vec<f64> = after
        .iter()
        .map(|(p, c)| c - before.get(p).copied().unwrap_or(0.0))
        .filter(|d| *d >= 0.05)
        .collect();
    d.sort_by(|a, b| b.total_cmp(a));
    d.iter()
        .map(|c| format!("{c:.1}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// MLflow's answer time summed per endpoint (the exporter's own request-latency histogram) and the
/// requests counted in it: (endpoint, seconds, requests).
fn latency(p: &Pipeline) -> Vec<(&'static str, f64, u64)> {
    let h = p.telemetry.api_latency();
    [
        "experiments/search",
        "runs/search",
        "registered-models/search",
        "model-versions/search",
    ]
    .into_iter()
    .map(|e| {
        let m = h.with_label_values(&[e]);
        (e, m.get_sample_sum(), m.get_sample_count())
    })
    .collect()
}

/// What was answered between two readings of [`latency`], as "endpoint n× ms".
fn latency_delta(a: &[(&str, f64, u64)], b: &[(&str, f64, u64)]) -> String {
    a.iter()
        .zip(b)
        .filter(|(x, y)| y.2 > x.2)
        .map(|(x, y)| format!("{} {}× {:.0} ms", x.0, y.2 - x.2, (y.1 - x.1) * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident memory of a group, summed (shared pages counted in each process).
fn group_rss_mib(pgrp: u32) -> f64 {
    group_pids(pgrp)
        .iter()
        .map(|p| procfs::status_mib(p, "VmRSS:"))
        .filter(|v| v.is_finite())
        .sum()
}

/// Resets this process's peak resident memory (VmHWM) to its current resident size, so that each
/// full sync's peak is its own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Kills the process when dropped, whatever happens to the bench.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end within `limit` (killed past it), stdout and stderr into files of `dir`;
/// returns stdout, or panics naming `what` with the end of stderr.
fn run_bounded(mut cmd: Command, dir: &Path, what: &str, limit: Duration) -> String {
    let (out, err) = (
        dir.join(format!("{what}.out")),
        dir.join(format!("{what}.err")),
    );
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = Killed(cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}")));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < limit, "{what} did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status}): {}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );
    std::fs::read_to_string(&out).unwrap()
}

/// The last line of a child's stdout as JSON (the scripts print one JSON line last).
fn json_line(out: &str, what: &str) -> serde_json::Value {
    let line = out.lines().rev().find(|l| l.starts_with('{'));
    serde_json::from_str(line.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what} printed no JSON line ({e}): {out}"))
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(project_dir().join("benches/baseline").join(script));
    cmd
}

/// One full sync of a fresh pipeline, measured.
/// One nothing-changed cycle: wall time, what it read, CPU of the exporter and of MLflow, MLflow's
/// answer times, and (on the median) every cycle's time.
struct Idle {
    seconds: f64,
    report: mlflow_exporter::sync::CycleReport,
    cpu: (f64, f64),
    latency: String,
    all: String,
}

struct Full {
    seconds: f64,
    read_seconds: f64,
    requests: usize,
    runs_read: usize,
    cpu: f64,
    server_cpu: f64,
    /// The server's CPU by process, largest first.
    server_split: String,
    peak_mib: f64,
    rss_mib: f64,
    /// Live heap (counting allocator): after, at its peak, before.
    live_mib: f64,
    live_peak_mib: f64,
    live_before_mib: f64,
    /// Sampled live heap peaks: while reading MLflow / while detecting, deriving and publishing.
    read_peak_mib: f64,
    rest_peak_mib: f64,
    /// 1-minute load average before → after.
    load: String,
}

fn ok(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    let runs: usize = std::env::var("MLFLOW_REAL_RUNS")
        .ok()
        .map(|v| v.parse().expect("MLFLOW_REAL_RUNS: a number of runs"))
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("mlflow.log");
    // On any failure, show what MLflow said last.
    let default_hook = std::panic::take_hook();
    let hook_log = log_path.clone();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let log = std::fs::read_to_string(&hook_log).unwrap_or_default();
        eprintln!(
            "--- end of the MLflow server's log ---\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }));

    // The store: schema by MLflow itself, rows by bulk SQL (see load_mlflow.py).
    let t = Instant::now();
    let mut load = python("load_mlflow.py");
    load.arg("--db")
        .arg(dir.path().join("mlflow.db"))
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .args(["--runs", &runs.to_string()])
        .args(["--experiments", &EXPERIMENTS.to_string()])
        .args(["--now-ms", &now_ms().to_string()]);
    let loaded = json_line(
        &run_bounded(load, work.path(), "load", LOAD_LIMIT),
        "load_mlflow.py",
    );
    let load_s = t.elapsed().as_secs_f64();
    eprintln!("loaded: {loaded}");

    // Two workers: one per core, so the exporter's concurrent searches are each answered by a worker
    // of their own (one worker would serialise them; more would only contend for the two cores).
    let server = MlflowServer::start_on(dir, 2, &[]);
    let pgrp = server.child.id();
    eprintln!("MLflow at {} (process group {pgrp})", server.url);

    let mut settings = Settings::default();
    settings.mlflow.tracking_uri = server.url.clone();
    settings.probes.mlflow_health = false;
    let (concurrency, page_size) = (settings.mlflow.concurrency, settings.mlflow.page_size);
    let rt = runtime(2);
    let rss_open = procfs::status_mib("self", "VmRSS:");
    let open = |name: &str| {
        let mut s = settings.clone();
        s.storage.path = work.path().join(name);
        s.validate().expect("valid settings");
        rt.block_on(Pipeline::open(&s, now_ms())).unwrap()
    };

    // Floor and full sync alternately, twice: MLflow (SQLite's page cache, Python's) warms up.
    let mut floors = Vec::new();
    let mut fulls = Vec::new();
    let mut pipeline = None;
    for round in 0..2 {
        let (s0, load0) = (group_cpu_by_pid(pgrp), loadavg());
        let f = rt.block_on(floor::full_sync(&server.url, concurrency, page_size));
        let s1 = group_cpu_by_pid(pgrp);
        let cpu = s1.values().sum::<f64>() - s0.values().sum::<f64>();
        let how = format!("{}; load {load0} → {}", split(&s0, &s1), loadavg());
        floors.push((f, cpu, how));
        eprintln!("floor {round}: {f:?}");

        // A fresh pipeline each round, so that each cycle is a full one; the last one is kept.
        drop(pipeline.take());
        let mut p = open(&format!("events-{round}.db"));
        reset_peak();
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        let (live0, load0) = (LIVE.load(Ordering::Relaxed), loadavg());
        let (c0, s0) = (cpu_seconds("self"), group_cpu_by_pid(pgrp));
        let sampler = LiveSampler::start();
        let t = Instant::now();
        let r = rt.block_on(p.cycle(now_ms())).unwrap();
        let seconds = t.elapsed().as_secs_f64();
        let (read_peak, rest_peak) = sampler.peaks(r.seconds);
        let s1 = group_cpu_by_pid(pgrp);
        let full = Full {
            seconds,
            read_seconds: r.seconds,
            requests: r.requests,
            runs_read: r.runs_read,
            cpu: cpu_seconds("self") - c0,
            server_cpu: s1.values().sum::<f64>() - s0.values().sum::<f64>(),
            server_split: split(&s0, &s1),
            peak_mib: procfs::status_mib("self", "VmHWM:"),
            live_mib: mib_of(LIVE.load(Ordering::Relaxed)),
            live_peak_mib: mib_of(PEAK.load(Ordering::Relaxed)),
            live_before_mib: mib_of(live0),
            read_peak_mib: mib_of(read_peak),
            rest_peak_mib: mib_of(rest_peak),
            load: format!("{load0} → {}", loadavg()),
            rss_mib: procfs::status_mib("self", "VmRSS:"),
        };
        eprintln!("full {round}: {seconds:.2} s, {} runs", r.runs_read);
        fulls.push(full);
        pipeline = Some(p);
    }
    let mut pipeline = pipeline.unwrap();
    let runs_held = pipeline.syncer.snapshot().runs.len();

    // Incremental, nothing changed: one cycle is a noisy sample (MLflow's workers, the machine), so
    // each figure is the median of IDLE_CYCLES cycles a second apart, with their range.
    let idle = |pipeline: &mut Pipeline| {
        let mut cycles: Vec<Idle> = (0..IDLE_CYCLES)
            .map(|_| {
                std::thread::sleep(Duration::from_secs(1));
                let (c0, s0, l0) = (cpu_seconds("self"), group_cpu(pgrp), latency(pipeline));
                let t = Instant::now();
                let report = rt.block_on(pipeline.cycle(now_ms())).unwrap();
                Idle {
                    seconds: t.elapsed().as_secs_f64(),
                    report,
                    cpu: (cpu_seconds("self") - c0, group_cpu(pgrp) - s0),
                    latency: latency_delta(&l0, &latency(pipeline)),
                    all: String::new(),
                }
            })
            .collect();
        cycles.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let all = cycles
            .iter()
            .map(|c| format!("{:.0}", c.seconds * 1000.0))
            .collect::<Vec<_>>()
            .join(", ");
        let mut median = cycles.swap_remove(IDLE_CYCLES / 2);
        median.all = all;
        median
    };
    let idle_inc = idle(&mut pipeline);
    // The same, with `mlflow.registry_interval: 5m` (the models were read by the cycles above).
    pipeline
        .syncer
        .set_registry_interval(Duration::from_secs(300));
    let reg_inc = idle(&mut pipeline);
    // And with `mlflow.running_interval: 5m` too (the running runs were searched a second ago).
    pipeline
        .syncer
        .set_running_interval(Duration::from_secs(300));
    let run_inc = idle(&mut pipeline);
    pipeline.syncer.set_registry_interval(Duration::ZERO);
    pipeline.syncer.set_running_interval(Duration::ZERO);

    // 100 runs created and ended through MLflow's REST API, then the next incremental cycle.
    let t = Instant::now();
    let mut change = python("load_mlflow.py");
    change
        .args(["--change", "100", "--experiments", &EXPERIMENTS.to_string()])
        .args(["--now-ms", &now_ms().to_string()])
        .env("MLFLOW_TRACKING_URI", &server.url);
    let changed = json_line(
        &run_bounded(change, work.path(), "change", LOAD_LIMIT),
        "load_mlflow.py --change",
    );
    let change_s = t.elapsed().as_secs_f64();
    let (c0, s0, l0) = (cpu_seconds("self"), group_cpu(pgrp), latency(&pipeline));
    let t = Instant::now();
    let changed_inc = rt.block_on(pipeline.cycle(now_ms())).unwrap();
    let changed_inc_s = t.elapsed().as_secs_f64();
    let changed_inc_cpu = (cpu_seconds("self") - c0, group_cpu(pgrp) - s0);
    let changed_inc_lat = latency_delta(&l0, &latency(&pipeline));
    let runs_after = pipeline.syncer.snapshot().runs.len();
    rt.block_on(pipeline.recorder.store().close());
    drop(pipeline);

    // The Python baseline on the same server, as its own process.
    let (s0, load0) = (group_cpu(pgrp), loadavg());
    let mut baseline = python("exporter.py");
    baseline
        .args(["--page-size", &page_size.to_string()])
        .env("MLFLOW_TRACKING_URI", &server.url);
    let t = Instant::now();
    let base = json_line(
        &run_bounded(baseline, work.path(), "baseline", BASELINE_LIMIT),
        "exporter.py",
    );
    let base_wall = t.elapsed().as_secs_f64();
    let base_load = format!("{load0} → {}", loadavg());
    let base_server_cpu = group_cpu(pgrp) - s0;
    let server_rss = group_rss_mib(pgrp);

    // Idle CPU of the release binary between cycles, MLflow's /health probe on (the default).
    let port = free_port();
    let exporter_log = work.path().join("exporter.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"));
    cmd.args(["--mlflow.tracking-uri", &server.url])
        .args(["--mlflow.sync-interval", "10m"])
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .arg("--storage.path")
        .arg(work.path().join("idle.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&exporter_log).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("MLFLOW_EXPORTER_") || k.starts_with("MLFLOW_TRACKING_") {
            cmd.env_remove(k);
        }
    }
    let exporter = Killed(cmd.spawn().expect("start mlflow-exporter"));
    let pid = exporter.0.id().to_string();
    let addr = format!("127.0.0.1:{port}");
    let t = Instant::now();
    while http_get(&addr, "/-/ready", &[]).ok().map(|r| r.status) != Some(200) {
        assert!(
            t.elapsed() < READY_LIMIT,
            "the exporter was not ready within {READY_LIMIT:?}: {}",
            std::fs::read_to_string(&exporter_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ready_s = t.elapsed().as_secs_f64();
    // Let the first cycle's tail (publishing, the first scrape's encoding) settle.
    std::thread::sleep(Duration::from_secs(5));
    let c0 = cpu_seconds(&pid);
    let t = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let idle_cpu = cpu_seconds(&pid) - c0;
    let idle_pct = idle_cpu / t.elapsed().as_secs_f64() * 100.0;
    let bin_peak = procfs::status_mib(&pid, "VmHWM:");
    let bin_rss = procfs::status_mib(&pid, "VmRSS:");
    drop(exporter);
    let mlflow_log = server.log();
    drop(server);

    let f = |k: &str| base[k].as_f64().unwrap_or(f64::NAN);
    let full_last = &fulls[1];
    let speedup = f("seconds") / full_last.seconds;
    let memory = f("peak_rss_mib") / fulls[0].peak_mib.max(fulls[1].peak_mib);
    let mib = |b: usize| b as f64 / (1 << 20) as f64;

    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| store: real MLflow 3.17.2, SQLite, 2 workers; {} runs ({}), {EXPERIMENTS} experiments, {} models, {} versions, {} aliases; bulk-loaded ({} MiB) | {load_s:.1} s (schema {} s, rows {} s) | – |",
        loaded["runs"], loaded["statuses"], loaded["models"], loaded["versions"], loaded["aliases"],
        loaded["db_mib"], loaded["schema_seconds"], loaded["insert_seconds"]
    );
    for (i, ((fl, scpu, ssplit), full)) in floors.iter().zip(&fulls).enumerate() {
        println!(
            "| round {}: download-only floor of a full sync, {} requests ({} runs pages over {} experiments, concurrency {concurrency}, page {page_size}), {:.0} MiB | {:.2} s (runs {:.2} s); MLflow CPU {scpu:.1} s ({ssplit}) | – |",
            i + 1,
            fl.total.pages,
            fl.runs.pages,
            fl.experiments,
            mib(fl.total.bytes),
            fl.total.seconds,
            fl.runs.seconds,
        );
        let ratio = full.seconds / fl.total.seconds;
        println!(
            "| round {}: full sync, exporter (Pipeline::cycle: read, detect, derive, publish), {} runs read, {} requests; load {} | {:.2} s (reading MLflow {:.2} s) = {ratio:.2} × the floor | ≤ 1.2 × floor ({}) |",
            i + 1,
            full.runs_read,
            full.requests,
            full.load,
            full.seconds,
            full.read_seconds,
            ok(ratio <= 1.2)
        );
        println!(
            "| round {}: CPU during the full sync: exporter (this process, all threads) / MLflow (all its processes: {}) | {:.2} s / {:.1} s | – |",
            i + 1,
            full.server_split,
            full.cpu,
            full.server_cpu
        );
        println!(
            "| round {}: exporter memory: peak during the full sync (VmHWM, reset before) / resident after (this process before any sync: {rss_open:.0} MiB); live heap before / peak / after; sampled peak while reading MLflow / while deriving and publishing | {:.0} / {:.0} MiB; heap {:.0} / {:.0} / {:.0} MiB; {:.0} / {:.0} MiB | – |",
            i + 1,
            full.peak_mib,
            full.rss_mib,
            full.live_before_mib,
            full.live_peak_mib,
            full.live_mib,
            full.read_peak_mib,
            full.rest_peak_mib
        );
    }
    for (what, c) in [
        ("incremental cycle, nothing changed", &idle_inc),
        (
            "the same with `mlflow.registry_interval: 5m` (registered models not due)",
            &reg_inc,
        ),
        (
            "the same with `mlflow.running_interval: 5m` too (runs started since the cursor searched instead of every running run)",
            &run_inc,
        ),
    ] {
        println!(
            "| {what}: median of {IDLE_CYCLES} cycles a second apart (all, ms: {}); of the median cycle: {} runs read, snapshot {runs_held} runs; CPU exporter / MLflow {:.3} / {:.2} s; MLflow answered {} | {} requests, {:.0} ms (reading MLflow {:.0} ms) | ≤ 5 requests, ≤ 200 ms ({}) |",
            c.all,
            c.report.runs_read,
            c.cpu.0,
            c.cpu.1,
            c.latency,
            c.report.requests,
            c.seconds * 1000.0,
            c.report.seconds * 1000.0,
            ok(c.report.requests <= 5 && c.seconds <= 0.2)
        );
    }
    println!(
        "| incremental cycle after 100 runs were created and ended through the REST API ({} requests, {change_s:.1} s): {} runs read, snapshot {runs_after} runs; CPU exporter / MLflow {:.3} / {:.2} s; MLflow answered {changed_inc_lat} | {} requests, {:.0} ms (reading MLflow {:.0} ms) | – |",
        changed["requests"],
        changed_inc.runs_read,
        changed_inc_cpu.0,
        changed_inc_cpu.1,
        changed_inc.requests,
        changed_inc_s * 1000.0,
        changed_inc.seconds * 1000.0
    );
    println!(
        "| Python baseline (benches/baseline/exporter.py: MlflowClient.search_runs paged, prometheus_client gauges), {} runs, {} runs pages + {} registry pages; CPU {:.1} s, MLflow CPU {base_server_cpu:.1} s; wall with start-up and imports {base_wall:.1} s; load {base_load} | {:.1} s full sync, peak RSS {:.0} MiB | – |",
        base["runs"],
        base["pages"],
        base["registry_pages"],
        f("cpu_seconds"),
        f("seconds"),
        f("peak_rss_mib")
    );
    println!(
        "| full sync: Python baseline / exporter (round 2; round 1: {:.2} ×) | {speedup:.2} × | ≥ 5 × ({}) |",
        f("seconds") / fulls[0].seconds,
        ok(speedup >= 5.0)
    );
    println!(
        "| CPU of the client side of a full sync: Python baseline / exporter (round 2; round 1: {:.0} ×) | {:.0} × ({:.1} s / {:.2} s) | – |",
        f("cpu_seconds") / fulls[0].cpu,
        f("cpu_seconds") / full_last.cpu,
        f("cpu_seconds"),
        full_last.cpu
    );
    println!(
        "| memory: Python baseline peak RSS / exporter peak during a full sync (this process); the release binary after its first full sync: VmHWM {bin_peak:.0} MiB ({:.1} ×) | {memory:.1} × | ≥ 10 × ({}) |",
        f("peak_rss_mib") / bin_peak,
        ok(memory >= 10.0)
    );
    println!(
        "| idle CPU of the release binary between cycles (sync every 10 m, MLflow /health probe every 15 s), {:.0} s window, ready after {ready_s:.0} s; resident {bin_rss:.0} MiB | {idle_pct:.3} % of one core ({idle_cpu:.2} s) | < 0.1 % ({}) |",
        IDLE_WINDOW.as_secs_f64(),
        ok(idle_pct < 0.1)
    );
    println!(
        "| MLflow server resident memory at the end, all its processes | {server_rss:.0} MiB | – |"
    );
    if mlflow_log.contains("Traceback") {
        eprintln!(
            "--- the MLflow server logged a traceback; end of its log ---\n{}",
            &mlflow_log[mlflow_log.len().saturating_sub(4000)..]
        );
    }
}
