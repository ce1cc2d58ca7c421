//! Snapshot → metric families for 1 000 000 runs (target: under 1 s on one core), the memory kept per
//! run (target: under 300 bytes), and the encoding of the result. `cargo bench --bench derive`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mlflow_exporter::app::count_and_derive;
use mlflow_exporter::config::{ExtraLabel, Rate, RateMatch, Settings};
use mlflow_exporter::delivery::{Bounds, Delivery};
use mlflow_exporter::exposition::Publisher;
use mlflow_exporter::metrics::{derive, Derivation};
use mlflow_exporter::sync::snapshot::RunStatus;
use mlflow_exporter::tally::Tally;

mod common;
use common as synthetic;
mod install;
mod procfs;

/// Counts live heap bytes, so memory per run is measured exactly rather than read off RSS.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `DERIVE_RUNS=100000` for the scale of the real-MLflow bench.
    let runs = std::env::var("DERIVE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut settings = Settings::default();
    settings.cost.rates = (0..4)
        .map(|i| Rate {
            matcher: RateMatch {
                tag: Some("instance_type".into()),
                param: None,
                value: Some(format!("g5.{i}xlarge")),
                regex: None,
            },
            hourly_rate: 1.0 + i as f64,
            gpus: Some(1 << i),
        })
        .collect();
    settings.metrics.extra_labels = vec![ExtraLabel {
        name: "estimator".into(),
        tag: None,
        param: Some("estimator_class".into()),
    }];
    let d = Derivation::new(&settings);
    let history = Delivery::new(Bounds::new(&settings.delivery));

    let before = LIVE.load(Ordering::Relaxed);
    let mut snap = synthetic::snapshot(runs, 1_000);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    // The first count of a full read: every run is new to the tally.
    let t = Instant::now();
    let mut tally = Tally::of(&mut snap, &settings, synthetic::NOW_MS);
    let first_count = t.elapsed().as_secs_f64();
    let tally_bytes = LIVE.load(Ordering::Relaxed) - before - bytes;

    // Warm up once, then the median of 5. derive shares its work between two threads: the wall
    // time is measured, and the CPU time of all five (one core's time, as the target is set).
    let _ = derive(&snap, &tally, &history, &d, synthetic::NOW_MS);
    let cpu0 = procfs::cpu_seconds("self");
    let times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let f = derive(&snap, &tally, &history, &d, synthetic::NOW_MS);
            std::hint::black_box(f);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = (procfs::cpu_seconds("self") - cpu0) / 5.0;
    let families = derive(&snap, &tally, &history, &d, synthetic::NOW_MS);
    let series: usize = families.iter().map(|f| f.series()).sum();

    let d2 = d.clone();
    let publisher = Publisher::detached(d).unwrap();
    let publish: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            publisher.publish(&snap, &tally, &history, synthetic::NOW_MS);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let encoded = publisher.current();
    // A cycle in which nothing changed but time: running runs' costs advance, the rest is as before.
    // As many runs are running as in the real-MLflow bench's store (63 in 100 000), not a sixth.
    let mut snap = snap;
    let mut kept = 0;
    for r in snap.runs.values_mut() {
        if r.status == RunStatus::Running {
            kept += 1;
            if kept * 100_000 > 63 * runs {
                r.status = RunStatus::Finished;
                r.end_ms = r.start_ms + 3_600_000;
            }
        }
    }
    publisher.publish(&snap, &tally, &history, synthetic::NOW_MS);
    let mut counts = Vec::new();
    let later: Vec<f64> = (1..=5)
        .map(|i| {
            let t = Instant::now();
            let now = synthetic::NOW_MS + i * 10_000;
            tally.labels.admit(&snap);
            let folds = tally.labels.folds(&snap);
            tally.count(&mut snap, &folds, Vec::new(), false, now, usize::MAX);
            counts.push(t.elapsed().as_secs_f64());
            publisher.publish(&snap, &tally, &history, now);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let later_derive: Vec<f64> = (1..=5)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(derive(
                &snap,
                &tally,
                &history,
                &d2,
                synthetic::NOW_MS + i * 10_000,
            ));
            t.elapsed().as_secs_f64()
        })
        .collect();

    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!("| derive, {runs} runs, 1 000 experiments, 1 extra label ({series} series), on two threads | {:.0} ms (median of 5); CPU {:.0} ms (mean) | < 1 000 ms of one core |", median(times) * 1e3, cpu * 1e3);
    println!(
        "| snapshot memory per run (heap, map overhead included) | {:.0} bytes | < 300 bytes |",
        bytes as f64 / runs as f64
    );
    println!(
        "| tally memory per run (its bookkeeping in the run records is in the snapshot's) | {:.0} bytes | – |",
        tally_bytes as f64 / runs as f64
    );
    println!(
        "| first count of the full read into the tally (every run new) | {:.0} ms | – |",
        first_count * 1e3
    );
    println!(
        "| derive + encode (text and gzip) | {:.0} ms (median of 5) | – |",
        median(publish) * 1e3
    );
    println!(
        "| count + publish 10 s later, nothing changed but time (count {:.0} ms, derive {:.0} ms of it) | {:.0} ms (median of 5) | – |",
        median(counts) * 1e3,
        median(later_derive) * 1e3,
        median(later) * 1e3
    );
    println!(
        "| exposition size | {} KiB text, {} KiB gzip | – |",
        encoded.text().len() / 1024,
        encoded.gzip().len() / 1024
    );
    // What the compression level of the snapshot's part costs and saves (it is compressed once
    // per cycle, and every scrape sends it).
    let text = encoded.text();
    for level in [1, 6, 9] {
        let t = Instant::now();
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
        std::io::Write::write_all(&mut z, &text).unwrap();
        let out = z.finish().unwrap();
        println!(
            "| deflate of that text at level {level} | {:.0} ms, {} KiB | – |",
            t.elapsed().as_secs_f64() * 1e3,
            out.len() / 1024
        );
    }

    install_figures();
}

/// The series budget on the synthetic large install (`common::install`, the install of the series
/// budget test): what one scrape holds with the default configuration, how large it is, and what
/// the first count and a later cycle cost.
fn install_figures() {
    let settings = Settings::default();
    let (publisher, mut tally, mut snap, delivery, report, first) = install::first_cycle(&settings);
    let first = first.as_secs_f64();
    let encoded = publisher.current();
    let text = encoded.text();
    let samples = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count();
    let later: Vec<f64> = (1..=5)
        .map(|i| {
            let t = Instant::now();
            let (f, _) = count_and_derive(
                &publisher,
                &mut tally,
                &mut snap,
                &delivery,
                Vec::new(),
                false,
                install::NOW_MS + i * 10_000,
            );
            std::hint::black_box(f);
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "| large install, default config: 100 000 runs, 200 experiments, 500 models, 5 000 versions, {} serving targets; series in one scrape (new counter series folded by the budget: {}) | {samples} (text {} KiB, gzip {} KiB) | ≤ 10 000 |",
        delivery.targets().count(),
        report.budget_folded,
        text.len() / 1024,
        encoded.gzip().len() / 1024
    );
    println!(
        "| that install: first count and derive (every run new) / a later cycle, nothing changed but time | {:.0} ms / {:.0} ms (median of 5) | – |",
        first * 1e3,
        median(later) * 1e3
    );
}
