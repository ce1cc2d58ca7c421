//! The `mlflow-exporter` binary as an SRE runs it: flags and MLflow's variables, `check-config`,
//! the HTTP endpoints, a scrape that `promtool check metrics` accepts, MLflow going away (last good
//! snapshot served, `mlflow_up 0`), graceful exit on SIGTERM, and no secret in any output.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use crate::support::exporter::{example_config, run_exporter, ExporterProcess};
use crate::support::http::{free_port, http_get, wait_until};
use crate::support::mlflow::MlflowServer;
use crate::support::scrape::{promtool_check_metrics, Scrape};
use crate::support::{now_ms, write_file};

const PASSWORD: &str = "pw-Zq8-never-print";
const TOKEN: &str = "tok-Xv3-never-print";

#[test]
fn serves_a_real_mlflow_and_survives_it_going_away() {
    let mut mlflow = MlflowServer::start();
    mlflow.seed(now_ms() / 1000 * 1000, "initial");
    let config = example_config();
    let mut exporter = ExporterProcess::start(
        mlflow.dir.path(),
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.sync-interval=1s",
            "--log.format=json",
        ],
        &[
            ("MLFLOW_TRACKING_URI", &mlflow.url),
            // A server without auth ignores credentials; they must still never be printed.
            ("MLFLOW_TRACKING_USERNAME", "exporter"),
            ("MLFLOW_TRACKING_PASSWORD", PASSWORD),
            ("MLFLOW_TRACKING_TOKEN", TOKEN),
            ("MLFLOW_EXPORTER_MLFLOW__TIMEOUT", "2s"),
            ("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0"),
        ],
    );
    exporter.wait_ready();

    let landing = exporter.get("/");
    assert_eq!(landing.status, 200);
    assert!(
        landing.text().contains("MLflow Exporter") && landing.text().contains(r#"href="/metrics""#)
    );
    assert_eq!(exporter.get("/-/healthy").status, 200);
    assert_eq!(exporter.get("/nope").status, 404);

    let plain = exporter.get("/metrics");
    assert_eq!(plain.status, 200);
    let text = plain.text();
    assert_eq!(
        plain.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (lint, code) = promtool_check_metrics(&text);
    assert_eq!(
        (lint.as_str(), code),
        ("", Some(0)),
        "promtool check metrics"
    );
    let s = Scrape::parse(&text);
    assert_eq!(s.get("mlflow_up", &[]), 1.0);
    assert_eq!(
        s.get(
            "mlflow_runs",
            &[("experiment", "vision"), ("status", "FINISHED")]
        ),
        2.0
    );
    // Every derived HELP says the figures are as of the last sync.
    let helps: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# HELP mlflow_run"))
        .collect();
    assert!(!helps.is_empty());
    for h in helps {
        assert!(h.ends_with("(as of the last sync with MLflow)"), "{h}");
    }

    let gz = http_get(&exporter.addr, "/metrics", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(gz.headers["content-encoding"], "gzip");
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    let z = Scrape::parse(&unzipped);
    assert_eq!(z.get("mlflow_users", &[]), 7.0);

    // MLflow goes away: the exporter says so and keeps serving the last good figures.
    mlflow.stop();
    wait_until(Duration::from_secs(30), "mlflow_up 0", || {
        exporter.scrape().get("mlflow_up", &[]) == 0.0
    });
    let s = exporter.scrape();
    assert!(
        s.get(
            "mlflow_exporter_sync_errors_total",
            &[("reason", "connect"), ("workspace", "")]
        ) >= 1.0
    );
    assert_eq!(
        s.get(
            "mlflow_runs",
            &[("experiment", "vision"), ("status", "FINISHED")]
        ),
        2.0
    );
    assert_eq!(s.get("mlflow_users", &[]), 7.0);
    assert_eq!(
        exporter.get("/-/ready").status,
        200,
        "ready stays true once synced"
    );

    // SIGTERM: a clean exit.
    Command::new("kill")
        .args(["-TERM", &exporter.child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(10), "exit after SIGTERM", || {
        status = exporter.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "exit status {status:?}");

    let log = exporter.stderr();
    assert!(
        log.contains(r#""message":"sync with MLflow done""#),
        "{log}"
    );
    assert!(log.contains(r#""reason":"connect""#), "{log}");
    for secret in [PASSWORD, TOKEN] {
        assert!(!log.contains(secret), "secret in the log");
        assert!(!text.contains(secret) && !unzipped.contains(secret));
    }
}

#[test]
fn not_ready_until_the_first_sync() {
    // Nothing listens on this port: the exporter serves, but is not ready and says MLflow is down.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut exporter = ExporterProcess::start(
        dir.path(),
        &["--mlflow.sync-interval=1s"],
        &[
            ("MLFLOW_TRACKING_URI", &url),
            ("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0"),
        ],
    );
    wait_until(Duration::from_secs(20), "a failed sync", || {
        http_get(&exporter.addr, "/metrics", &[])
            .map(|r| {
                Scrape::parse(&r.text()).get(
                    "mlflow_exporter_sync_errors_total",
                    &[("reason", "connect"), ("workspace", "")],
                ) >= 1.0
            })
            .unwrap_or(false)
    });
    let ready = exporter.get("/-/ready");
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("first successful sync"));
    assert_eq!(exporter.scrape().get("mlflow_up", &[]), 0.0);
    assert!(
        exporter.child.try_wait().unwrap().is_none(),
        "still running"
    );
    // Transparent huge pages are off for the process: merged over mimalloc's sparse arenas they
    // added 14 MiB of resident memory to the soak (src/memory.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.child.id())).unwrap();
    assert!(status.contains("THP_enabled:\t0\n"), "{status}");
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.yaml", "mlflow:\n  sync_interval: 30s\n");
    let (code, out, err) = run_exporter(
        &[
            "check-config",
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.full-resync-interval=2h",
        ],
        &[
            ("MLFLOW_TRACKING_URI", "https://mlflow.example:5000"),
            ("MLFLOW_TRACKING_USERNAME", "exporter"),
            ("MLFLOW_TRACKING_PASSWORD", PASSWORD),
            ("MLFLOW_TRACKING_TOKEN", TOKEN),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("tracking_uri: https://mlflow.example:5000"),
        "{out}"
    );
    assert!(out.contains("sync_interval: 30s"), "{out}");
    assert!(out.contains("full_resync_interval: 2h"), "{out}");
    assert!(out.contains("listen_address: :9868"), "{out}");
    assert_eq!(out.matches("<redacted>").count(), 2, "{out}");
    assert!(!out.contains(PASSWORD) && !out.contains(TOKEN) && !err.contains(PASSWORD));
}

#[test]
fn a_bad_configuration_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.yaml",
        "mlflow:\n  tracking_uri: http://m\n  sync_interval: soon\n",
    );
    let (code, _, err) = run_exporter(&["--config.file", config.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("mlflow.sync_interval"), "{err}");

    let (code, _, err) = run_exporter(&["check-config"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("MLFLOW_TRACKING_URI"), "{err}");

    let (code, _, err) = run_exporter(&["--config.file", "/does/not/exist.yaml"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/does/not/exist.yaml"), "{err}");

    let (code, _, err) = run_exporter(&["--log.level=loud"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("loud"), "{err}");
}
