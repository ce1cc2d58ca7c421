//! Snapshot → metric families for 1 000 000 runs (target: under 1 s on one core), the memory kept per
//! run (target: under 300 bytes), and the encoding of the result. `cargo bench --bench derive`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mlflow_exporter::config::{ExtraLabel, Rate, RateMatch, Settings};
use mlflow_exporter::delivery::{Bounds, Delivery};
use mlflow_exporter::metrics::publish::Publisher;
use mlflow_exporter::metrics::{derive, Derivation};
use mlflow_exporter::sync::snapshot::RunStatus;

mod common;
use common as synthetic;
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
    let snap = synthetic::snapshot(runs, 1_000);
    let bytes = LIVE.load(Ordering::Relaxed) - before;

    // Warm up once, then the median of 5. derive shares its work between two threads: the wall
    // time is measured, and the CPU time of all five (one core's time, as the target is set).
    let _ = derive(&snap, &history, &d, synthetic::NOW_MS);
    let cpu0 = procfs::cpu_seconds("self");
    let times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let f = derive(&snap, &history, &d, synthetic::NOW_MS);
            std::hint::black_box(f);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = (procfs::cpu_seconds("self") - cpu0) / 5.0;
    let families = derive(&snap, &history, &d, synthetic::NOW_MS);
    let series: usize = families.iter().map(|f| f.series()).sum();

    let d2 = d.clone();
    let publisher = Publisher::new(d).unwrap();
    let publish: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            publisher.publish(&snap, &history, synthetic::NOW_MS);
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
    publisher.publish(&snap, &history, synthetic::NOW_MS);
    let later: Vec<f64> = (1..=5)
        .map(|i| {
            let t = Instant::now();
            publisher.publish(&snap, &history, synthetic::NOW_MS + i * 10_000);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let later_derive: Vec<f64> = (1..=5)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(derive(&snap, &history, &d2, synthetic::NOW_MS + i * 10_000));
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
        "| derive + encode (text and gzip) | {:.0} ms (median of 5) | – |",
        median(publish) * 1e3
    );
    println!(
        "| publish 10 s later, nothing changed but time (derive {:.0} ms of it) | {:.0} ms (median of 5) | – |",
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
}
