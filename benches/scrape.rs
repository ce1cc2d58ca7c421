//! `/metrics` served from the already encoded snapshot: about 10 000 samples under 100 concurrent
//! connections of wrk (target: p99 under 5 ms), plain and gzip as Prometheus asks; a 3 000-run
//! snapshot derived without a budget, and the large install of the derive bench as production
//! serves it with the default series budget. wrk and the
//! exporter share this machine's two cores. `cargo bench --bench scrape` (scripts/bench installs wrk).

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mlflow_exporter::config::Settings;
use mlflow_exporter::delivery::{Bounds, Delivery};
use mlflow_exporter::exposition::Publisher;
use mlflow_exporter::metrics::Derivation;
use mlflow_exporter::server::{self, AppState};

mod common;
#[allow(dead_code)]
mod install;

/// The lines of wrk's report that hold a figure: `50%`, `99%` and `Requests/sec:`.
fn wrk_figure(out: &str, key: &str) -> String {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string()
}

fn main() {
    let settings = Settings::default();
    let publisher = Publisher::detached(Derivation::new(&settings)).unwrap();
    let history = Delivery::new(Bounds::new(&settings.delivery));
    let mut snap = common::snapshot(3_000, 55);
    let tally = mlflow_exporter::tally::Tally::of(&mut snap, &settings, common::NOW_MS);
    publisher.publish(&snap, &tally, &history, common::NOW_MS);
    println!("| figure | value | target |");
    println!("|---|---|---|");
    measure(
        "3 000 runs, 55 experiments, unbudgeted",
        Arc::new(publisher),
    );
    // What production serves at the default series budget: the large install's first cycle.
    let (publisher, ..) = install::first_cycle(&settings);
    measure(
        "the large install of the derive bench through the series budget",
        Arc::new(publisher),
    );
}

/// Serves `publisher`'s scrape on loopback and prints wrk's figures for it, gzip and plain.
fn measure(what: &str, publisher: Arc<Publisher>) {
    let text = publisher.current().text();
    let samples = std::str::from_utf8(&text)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let state = AppState {
        publisher: publisher.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        telemetry_path: "/metrics".into(),
        ingest: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server::serve(
        listener,
        state,
        server::web::Web::load(None, Vec::new(), None).unwrap(),
        server::web::Limits::default(),
        async {
            let _ = stop_rx.await;
        },
    ));

    for (label, size, headers) in [
        (
            "gzip",
            publisher.current().gzip().len(),
            vec!["-H", "Accept-Encoding: gzip"],
        ),
        ("plain", text.len(), vec![]),
    ] {
        // Bounded: 10 s of load on loopback only.
        let out = Command::new("wrk")
            .args(["-t2", "-c100", "-d10s", "--latency"])
            .args(&headers)
            .arg(&url)
            .output()
            .expect("wrk is needed: apt-get install wrk (scripts/bench does)");
        let out = String::from_utf8_lossy(&out.stdout);
        println!(
            "| /metrics {label}, {what}: {samples} samples ({} KiB), wrk 100 connections 10 s | p50 {}, p99 {}, {} scrapes/s | p99 < 5 ms |",
            size / 1024,
            wrk_figure(&out, "50%"),
            wrk_figure(&out, "99%"),
            wrk_figure(&out, "Requests/sec:"),
        );
    }
    let _ = stop_tx.send(());
}
