//! Figures of a process read from /proc, shared by the benches that measure the exporter's cost.

/// A `/proc/<pid>/status` figure in MiB (`VmRSS:`, `VmHWM:`); `pid` may be `self`.
pub fn status_mib(pid: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
