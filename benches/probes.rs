//! Probes at scale: the release `mlflow-exporter` binary probing 500 endpoints every second (POST of a
//! small JSON body to `/invocations`, the answer checked with `$.predictions[0]`) for 60 s after a
//! 10 s warm-up, scraped with gzip every 15 s as Prometheus would (target: every probe on schedule,
//! none skipped, under 5 % of one core spent by the exporter, scrapes included). The endpoints are
//! served by another process (this program run again), so only the exporter's own CPU is counted:
//! utime + stime of its process from /proc. The tracking server is unreachable and synced once an
//! hour, so the sync loop costs nothing after start-up. `cargo bench --bench probes`.

mod procfs;

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROBES: usize = 500;
const INTERVAL_S: u64 = 1;
const WARMUP: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(60);
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// Set in the child process that serves the probed endpoints.
const TARGET: &str = "PROBES_BENCH_TARGET";
const ANSWER: &str = r#"{"predictions":[1]}"#;

/// A child process killed (and reaped) when dropped, also when the bench panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The probed model server: answers `POST /invocations` with a small JSON body on keep-alive
/// connections, and counts the connections it accepted (`GET /connections`). Prints its port on
/// stdout, and exits when its stdin closes (the parent died).
fn target() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    rt.block_on(async {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let app = axum::Router::new()
            .route(
                "/invocations",
                axum::routing::post(|_body: axum::body::Bytes| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        ANSWER,
                    )
                }),
            )
            .route(
                "/connections",
                axum::routing::get(
                    move || async move { accepted.load(Ordering::Relaxed).to_string() },
                ),
            );
        axum::serve(listener, app).await.unwrap();
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, target_port: u16, dir: &Path) -> String {
    let mut y = format!(
        "mlflow:\n  tracking_uri: http://127.0.0.1:9\n  sync_interval: 1h\n  max_retries: 0\n\
         web:\n  listen_address: 127.0.0.1:{port}\n\
         log:\n  level: warn\n\
         storage:\n  path: {}\n\
         probes:\n  mlflow_health: false\n  interval: {INTERVAL_S}s\n  timeout: 900ms\n  targets:\n",
        dir.join("events.db").display()
    );
    for i in 0..PROBES {
        y.push_str(&format!(
            "    - name: model-{i:03}\n      url: http://127.0.0.1:{target_port}/invocations\n      \
             body: {{inputs: [[1.0, 2.0, 3.0]]}}\n      expect: {{json_path: \"$.predictions[0]\"}}\n      \
             model: model-{i:03}\n      alias: champion\n"
        ));
    }
    y
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The figures of one scrape the bench reads.
#[derive(Default)]
struct Scrape {
    probes: f64,
    duration_sum: f64,
    failures: f64,
    skipped: f64,
    /// `mlflow_exporter_probe_delay_seconds` buckets: upper bound → cumulative count.
    delay: Vec<(f64, f64)>,
    gzip_bytes: usize,
    text_bytes: usize,
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn parse(text: &str, gzip_bytes: usize) -> Scrape {
    let mut s = Scrape {
        gzip_bytes,
        text_bytes: text.len(),
        ..Scrape::default()
    };
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        if l.starts_with("mlflow_probe_duration_seconds_count{") {
            s.probes += value(l);
        } else if l.starts_with("mlflow_probe_duration_seconds_sum{") {
            s.duration_sum += value(l);
        } else if l.starts_with("mlflow_probe_failures_total{") {
            s.failures += value(l);
        } else if l.starts_with("mlflow_exporter_probe_skipped_total") {
            s.skipped += value(l);
        } else if let Some(rest) =
            l.strip_prefix("mlflow_exporter_probe_delay_seconds_bucket{le=\"")
        {
            let le = rest.split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            s.delay.push((le, value(l)));
        }
    }
    s
}

/// The observations of a histogram between two scrapes: upper bound → cumulative count.
fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect()
}

/// The `q` quantile of a histogram's observations: the upper bound of the bucket it falls in
/// (what the histogram can tell for sure), and the value interpolated inside that bucket as
/// `histogram_quantile` does.
fn quantile(counts: &[(f64, f64)], q: f64) -> (f64, f64) {
    let total = counts.last().map_or(0.0, |c| c.1);
    if total == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, n) in counts {
        if n >= rank {
            if le.is_infinite() {
                return (le, lo);
            }
            let at = lo + (le - lo) * (rank - below) / (n - below).max(f64::MIN_POSITIVE);
            return (le, at);
        }
        (lo, below) = (le, n);
    }
    (f64::INFINITY, lo)
}

/// The share of observations above the bucket bound `le`, in %.
fn share_above(counts: &[(f64, f64)], le: f64) -> f64 {
    let total = counts.last().map_or(0.0, |c| c.1);
    let upto = counts.iter().find(|c| c.0 == le).map_or(f64::NAN, |c| c.1);
    100.0 * (total - upto) / total.max(1.0)
}

/// Context switches of every thread of a process, voluntary and not.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

async fn scrape(http: &reqwest::Client, url: &str) -> Scrape {
    let resp = http
        .get(url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("scrape /metrics");
    assert!(resp.status().is_success(), "/metrics: {}", resp.status());
    let gzip = resp.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&gzip[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    parse(&text, gzip.len())
}

async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    let r = http.get(url).send().await.ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

fn main() {
    if std::env::var_os(TARGET).is_some() {
        target();
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // The endpoints, in their own process.
    let mut t = Command::new(std::env::current_exe().unwrap())
        .env(TARGET, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = t.stdout.take().unwrap();
    let target = Killed(t);
    let mut port_line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut port_line)
        .unwrap();
    let target_port: u16 = port_line.trim().parse().expect("the target's port");

    let port = free_port();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(port, target_port, dir.path())).unwrap();
    let log_path = dir.path().join("exporter.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"));
    cmd.arg("--config.file")
        .arg(&config_path)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("MLFLOW_EXPORTER_") || k.starts_with("MLFLOW_TRACKING_") {
            cmd.env_remove(k);
        }
    }
    let exporter = Killed(cmd.spawn().expect("start mlflow-exporter"));
    let pid = exporter.0.id();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let connections = format!("http://127.0.0.1:{target_port}/connections");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        while get_text(&http, &format!("http://127.0.0.1:{port}/-/healthy"))
            .await
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the exporter did not start in 30 s: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    std::thread::sleep(WARMUP);

    // The window: a baseline scrape, then one every 15 s; the CPU counted is the 4 scrapes' and
    // the probes' between the baseline and the last.
    let (first, last, elapsed, cpu, target_cpu, conns, switches) = rt.block_on(async {
        let first = scrape(&http, &metrics).await;
        let conns0 = get_text(&http, &connections).await;
        let (cpu0, tcpu0) = (
            procfs::cpu_seconds(&pid.to_string()),
            procfs::cpu_seconds(&target.0.id().to_string()),
        );
        let switches0 = context_switches(pid);
        let t0 = Instant::now();
        let mut last = None;
        for k in 1..=(WINDOW.as_secs() / SCRAPE_EVERY.as_secs()) as u32 {
            tokio::time::sleep_until((t0 + SCRAPE_EVERY * k).into()).await;
            last = Some(scrape(&http, &metrics).await);
        }
        let (cpu1, tcpu1) = (
            procfs::cpu_seconds(&pid.to_string()),
            procfs::cpu_seconds(&target.0.id().to_string()),
        );
        let switches = context_switches(pid) - switches0;
        let elapsed = t0.elapsed().as_secs_f64();
        let conns1 = get_text(&http, &connections).await;
        let conns = conns0.zip(conns1).map(|(a, b)| {
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            (b, b - a)
        });
        (
            first,
            last.unwrap(),
            elapsed,
            cpu1 - cpu0,
            tcpu1 - tcpu0,
            conns,
            switches,
        )
    });
    let rss = procfs::status_mib(&pid.to_string(), "VmRSS:");
    let hwm = procfs::status_mib(&pid.to_string(), "VmHWM:");
    let load = loadavg();
    drop(exporter);
    drop(target);

    let probes = last.probes - first.probes;
    let expected = (PROBES as u64 * WINDOW.as_secs() / INTERVAL_S) as f64;
    let cpu_pct = 100.0 * cpu / elapsed;
    let mean_ms = 1000.0 * (last.duration_sum - first.duration_sum) / probes.max(1.0);
    let (conns_total, conns_new) = conns.unwrap_or((0, u64::MAX));
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| probes run in {elapsed:.1} s, {PROBES} targets at {INTERVAL_S} s (POST /invocations, JSONPath check, one keep-alive connection each) | {:.1} probes/s ({probes:.0}, expected {expected:.0}) | {} probes/s |",
        probes / elapsed,
        PROBES as u64 / INTERVAL_S
    );
    println!(
        "| failed / skipped probes in the window | {:.0} / {:.0} | 0 / 0 |",
        last.failures - first.failures,
        last.skipped - first.skipped
    );
    let delay = delta(&first.delay, &last.delay);
    let ((p50_le, p50), (p99_le, p99)) = (quantile(&delay, 0.50), quantile(&delay, 0.99));
    println!(
        "| start delay behind schedule (mlflow_exporter_probe_delay_seconds; bucket bound, interpolated) | p50 ≤ {} ms ({:.2}), p99 ≤ {} ms ({:.2}); {:.3} % over 10 ms, {:.3} % over 100 ms | – |",
        1000.0 * p50_le,
        1000.0 * p50,
        1000.0 * p99_le,
        1000.0 * p99,
        share_above(&delay, 0.01),
        share_above(&delay, 0.1)
    );
    println!(
        "| exporter CPU (utime + stime), 4 gzip scrapes included | {cpu_pct:.2} % of one core ({cpu:.2} s in {elapsed:.1} s) | < 5 % |"
    );
    println!(
        "| exporter context switches (all threads) | {:.0}/s | – |",
        switches as f64 / elapsed
    );
    println!("| probe duration as the exporter measures it (mean) | {mean_ms:.2} ms | – |");
    println!(
        "| exporter resident memory (VmRSS, peak VmHWM) | {rss:.1} MiB (peak {hwm:.1} MiB) | – |"
    );
    println!(
        "| /metrics with {PROBES} probes | {} KiB gzip, {} KiB text | – |",
        last.gzip_bytes / 1024,
        last.text_bytes / 1024
    );
    println!(
        "| target process (not counted): CPU, connections accepted (new in the window) | {:.1} % of one core, {conns_total} ({conns_new}) | – |",
        100.0 * target_cpu / elapsed
    );
    println!("| load average at the end (1, 5, 15 min), 2 cores shared | {load} | – |");
}
