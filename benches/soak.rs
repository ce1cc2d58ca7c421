//! Soak (`scripts/soak`, not CI): the release binary against a real MLflow that keeps changing, for
//! `SOAK_MINUTES` (30): a sync every 5 s, 100 scrapes a second, a steady stream of CI/CD events.
//! Prints a table: resident memory over time and its growth after warm-up, errors of every kind,
//! and events sent against events stored.

mod procfs;
// The soak drives MLflow and the exporter with the tests' helpers; it needs only some of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::exporter::{stored_events, ExporterProcess};
use support::http::{http_get, http_post};
use support::mlflow::MlflowServer;
use support::now_ms;
use support::scrape::Scrape;

const TOKEN: &str = "soak-events-token";
const SCRAPES_PER_SECOND: u64 = 100;
const EVENTS_PER_SECOND: u64 = 5;
/// A run created and ended through MLflow's REST API this often.
const RUN_EVERY: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

fn rss_mib(pid: u32) -> f64 {
    procfs::status_mib(&pid.to_string(), "VmRSS:")
}

/// Runs `f` once a `tick` until `stop`, paced against the clock (no drift; a late call is not
/// followed by a burst to catch up).
fn paced(tick: Duration, stop: &AtomicBool, mut f: impl FnMut(u64)) {
    let start = Instant::now();
    let (mut calls, mut slot) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        f(calls);
        calls += 1;
        slot += 1;
        let due = start + tick.mul_f64(slot as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            slot = ((now - start).as_nanos() / tick.as_nanos()) as u64;
        }
    }
}

/// Creates a run in the Default experiment and ends it, as a training script would.
fn mlflow_run(url: &str, n: u64) -> bool {
    let addr = url.trim_start_matches("http://");
    let t = now_ms();
    let body = serde_json::json!({"experiment_id": "0", "start_time": t - 60_000, "user_id": format!("soak{}@example.com", n % 7),
        "tags": [{"key": "team", "value": format!("team-{}", n % 3)}]});
    let Ok(r) = http_post(
        addr,
        "/api/2.0/mlflow/runs/create",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    ) else {
        return false;
    };
    let Some(id) = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["run"]["info"]["run_id"].as_str().map(String::from))
    else {
        return false;
    };
    let status = if n % 5 == 0 { "FAILED" } else { "FINISHED" };
    let end = serde_json::json!({"run_id": id, "status": status, "end_time": t});
    http_post(
        addr,
        "/api/2.0/mlflow/runs/update",
        &[("Content-Type", "application/json")],
        end.to_string().as_bytes(),
    )
    .is_ok_and(|r| r.status == 200)
}

fn main() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let warmup = duration / 6;
    let mlflow = MlflowServer::start();
    mlflow.seed(now_ms(), "initial");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("events.db");
    let exporter = ExporterProcess::start_on_store(
        dir.path(),
        &store,
        &["--mlflow.sync-interval=5s", "--log.level=warn"],
        &[
            ("MLFLOW_TRACKING_URI", mlflow.url.as_str()),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__ENABLED", "true"),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", TOKEN),
        ],
    );
    let pid = exporter.child.id();
    let t = Instant::now();
    while http_get(&exporter.addr, "/-/ready", &[])
        .map(|r| r.status)
        .ok()
        != Some(200)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not ready: {}",
            exporter.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "soak: {minutes} min against {} (exporter pid {pid})",
        mlflow.url
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (scrapes, scrape_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (sent, acked, event_errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (runs, run_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut threads = Vec::new();
    {
        let (stop, addr, ok, bad) = (
            stop.clone(),
            exporter.addr.clone(),
            scrapes.clone(),
            scrape_errors.clone(),
        );
        threads.push(std::thread::spawn(move || {
            paced(
                Duration::from_secs(1) / SCRAPES_PER_SECOND as u32,
                &stop,
                |_| {
                    let r = http_get(&addr, "/metrics", &[("Accept-Encoding", "gzip")]);
                    if r.is_ok_and(|r| r.status == 200 && !r.body.is_empty()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
        }));
    }
    {
        let (stop, addr) = (stop.clone(), exporter.addr.clone());
        let (sent, acked, bad) = (sent.clone(), acked.clone(), event_errors.clone());
        threads.push(std::thread::spawn(move || {
            let auth = format!("Bearer {TOKEN}");
            paced(Duration::from_secs(1) / EVENTS_PER_SECOND as u32, &stop, |n| {
                // Incidents opened and resolved in turn, each pair with its own id.
                let (kind, id) = if n % 2 == 0 { ("incident_opened", n) } else { ("incident_resolved", n - 1) };
                let body = serde_json::json!({"type": kind, "model": format!("model-{}", n % 4), "id": format!("soak-{id}"), "severity": "warning"});
                sent.fetch_add(1, Ordering::Relaxed);
                match http_post(&addr, "/api/v1/events", &[("Authorization", &auth), ("Content-Type", "application/json")], body.to_string().as_bytes()) {
                    Ok(r) if r.status == 200 && r.text().contains(r#""recorded":1"#) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        }));
    }
    {
        let (stop, url, ok, bad) = (
            stop.clone(),
            mlflow.url.clone(),
            runs.clone(),
            run_errors.clone(),
        );
        threads.push(std::thread::spawn(move || {
            paced(RUN_EVERY, &stop, |n| {
                if mlflow_run(&url, n) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            })
        }));
    }

    // Memory over time.
    let start = Instant::now();
    let mut curve: Vec<(f64, f64)> = vec![(0.0, rss_mib(pid))];
    let thread_count = |pid: u32| procfs::status_value(&pid.to_string(), "Threads:");
    let threads_start = thread_count(pid);
    let mut threads_max = threads_start;
    let mut mappings = procfs::mappings_kib(&pid.to_string());
    while start.elapsed() < duration {
        std::thread::sleep(SAMPLE_EVERY.min(duration.saturating_sub(start.elapsed())));
        curve.push((start.elapsed().as_secs_f64() / 60.0, rss_mib(pid)));
        // Where memory goes when it steps: the heap (anonymous) or mapped files, and threads (each
        // new one gets a stack and an allocator heap of its own).
        let n = thread_count(pid);
        threads_max = threads_max.max(n);
        eprintln!(
            "soak: {:.1} min, RSS {:.1} MiB (anonymous {:.1}, of it in huge pages {:.1}; files {:.1}), {n} threads",
            curve.last().unwrap().0,
            curve.last().unwrap().1,
            procfs::status_mib(&pid.to_string(), "RssAnon:"),
            procfs::rollup_mib(&pid.to_string(), "AnonHugePages:"),
            procfs::status_mib(&pid.to_string(), "RssFile:"),
        );
        // A step of the heap shows up as one mapping growing: name it.
        let now = procfs::mappings_kib(&pid.to_string());
        for (key, kib) in &now {
            let before = mappings.get(key).copied().unwrap_or(0);
            if kib.abs_diff(before) >= 1024 {
                eprintln!("soak:   mapping {key}: {before} → {kib} KiB");
            }
        }
        mappings = now;
    }
    let threads_end = thread_count(pid);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // One more sync with the load stopped, then the exporter's own view.
    std::thread::sleep(Duration::from_secs(7));
    let s = Scrape::parse(&http_get(&exporter.addr, "/metrics", &[]).unwrap().text());
    let sync_errors: f64 = s.family("mlflow_exporter_sync_errors_total").values().sum();
    let store_errors = s.get(
        "mlflow_exporter_events_total",
        &[("source", "api"), ("outcome", "error")],
    );
    let recorded = s.get(
        "mlflow_exporter_events_total",
        &[("source", "api"), ("outcome", "recorded")],
    );
    let up = s.get("mlflow_up", &[]);
    let log = exporter.stderr();
    let log_errors = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .count();
    drop(exporter);
    // The receiver's events only: the sync records the registry's own (deployments, versions).
    let stored = stored_events(&store)
        .iter()
        .filter(|e| e["source"] == "api")
        .count();

    // Each cycle allocates and frees while it derives and publishes, so one sample can catch a
    // transient: growth compares the median of the sixth after warm-up with that of the last sixth.
    let median = |from: f64, to: f64| {
        let mut v: Vec<f64> = curve
            .iter()
            .filter(|(m, _)| *m * 60.0 >= from && *m * 60.0 < to)
            .map(|p| p.1)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let sixth = duration.as_secs_f64() / 6.0;
    let total = duration.as_secs_f64() + 1.0;
    let warm = median(warmup.as_secs_f64(), warmup.as_secs_f64() + sixth);
    let last = median(total - 1.0 - sixth, total);
    let peak = curve.iter().map(|p| p.1).fold(0.0, f64::max);
    let growth = (last - warm) / warm * 100.0;
    let points: Vec<String> = curve
        .iter()
        .step_by((curve.len() / 12).max(1))
        .map(|(m, r)| format!("{m:.0} min {r:.1}"))
        .collect();
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!("| duration; load | {minutes} min: sync every 5 s, {SCRAPES_PER_SECOND} scrapes/s (gzip), {EVENTS_PER_SECOND} events/s, a run created and ended every {} s | – |", RUN_EVERY.as_secs());
    println!(
        "| resident memory (MiB) over time | {} | – |",
        points.join(", ")
    );
    println!("| resident memory: median of the sixth after warm-up ({:.0} min) → median of the last sixth; highest sample | {warm:.1} → {last:.1} MiB ({growth:+.1} %); {peak:.1} MiB | growth < 5 % ({}) |", warmup.as_secs_f64() / 60.0, if growth < 5.0 { "met" } else { "MISSED" });
    println!(
        "| exporter threads: at the start / most / at the end | {threads_start} / {threads_max} / {threads_end} | – |"
    );
    println!(
        "| scrapes answered / failed | {} / {} | 0 failed |",
        scrapes.load(Ordering::Relaxed),
        scrape_errors.load(Ordering::Relaxed)
    );
    println!("| events sent / acknowledged / failed / stored / counted as recorded | {} / {} / {} / {stored} / {recorded} | all accounted for ({}) |",
        sent.load(Ordering::Relaxed), acked.load(Ordering::Relaxed), event_errors.load(Ordering::Relaxed),
        if acked.load(Ordering::Relaxed) == stored as u64 && stored as f64 == recorded && event_errors.load(Ordering::Relaxed) == 0 { "met" } else { "MISSED" });
    println!(
        "| runs created in MLflow / failed | {} / {} | – |",
        runs.load(Ordering::Relaxed),
        run_errors.load(Ordering::Relaxed)
    );
    println!("| sync errors; store errors; warnings and errors logged; mlflow_up at the end | {sync_errors} ; {store_errors} ; {log_errors} ; {up} | 0 ; 0 ; 0 ; 1 |");
    if log_errors > 0 {
        eprintln!("{log}");
    }
}
