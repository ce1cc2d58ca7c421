//! Figures of a process read from /proc, shared by the benches that measure the exporter's cost.
// Each bench is its own crate and uses a part of these.
#![allow(dead_code)]

/// A `/proc/<pid>/status` figure in MiB (`VmRSS:`, `VmHWM:`, `RssAnon:`); `pid` may be `self`.
pub fn status_mib(pid: &str, key: &str) -> f64 {
    status_value(pid, key) / 1024.0
}

/// A `/proc/<pid>/status` figure as written (kB for sizes; `Threads:` is a count).
pub fn status_value(pid: &str, key: &str) -> f64 {
    field(&format!("/proc/{pid}/status"), key)
}

/// The number after `key` in a `key: value [kB]` file of /proc; NaN when missing.
fn field(path: &str, key: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// USER_HZ: the unit of utime and stime in /proc/<pid>/stat on Linux.
const TICKS: f64 = 100.0;

/// Fields of /proc/<pid>/stat after the command name (which may hold spaces): state is 0, pgrp 2,
/// utime 11, stime 12.
pub fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime, in seconds, of [`stat_fields`].
fn cpu_of(f: &[String]) -> f64 {
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / TICKS
}

/// utime + stime of one process, all threads, in seconds; `pid` may be `self`.
pub fn cpu_seconds(pid: &str) -> f64 {
    stat_fields(pid).map_or(f64::NAN, |f| cpu_of(&f))
}

/// Resident KiB of each mapping in `/proc/<pid>/smaps`, keyed by its address range and path
/// ("anonymous" when none). Tells whose memory grew: a glibc arena (64 MiB-aligned, holds
/// SQLite's allocations), mimalloc's arena (the Rust heap), a thread stack or a mapped file.
pub fn mappings_kib(pid: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return out;
    };
    let mut current = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                let path = words.nth(4).unwrap_or("anonymous");
                current = Some(format!("{range} {path}"));
            }
            Some("Rss:") => {
                if let (Some(key), Some(kib)) =
                    (current.take(), words.next().and_then(|v| v.parse().ok()))
                {
                    out.insert(key, kib);
                }
            }
            _ => {}
        }
    }
    out
}

/// A `/proc/<pid>/smaps_rollup` figure in MiB (`AnonHugePages:`: memory in transparent huge pages).
pub fn rollup_mib(pid: &str, key: &str) -> f64 {
    field(&format!("/proc/{pid}/smaps_rollup"), key) / 1024.0
}
