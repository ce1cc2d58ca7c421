//! Probes against real parts: a tiny pyfunc model logged to a real MLflow tracking server, served by
//! `mlflow models serve`, probed by the exporter binary (`POST /invocations` with a JSON body, an
//! expected status and JSONPath, a header whose value comes from the environment) next to the
//! built-in probe of the tracking server's `/health`. The model server is stopped and started again
//! on the same port: the outage is counted once, dated by the probes, timed to the millisecond in the
//! store and in `/metrics`, and both survive a restart of the exporter. The header's value never
//! shows, in the debug log or in `/metrics`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::exporter::ExporterProcess;
use crate::support::http::{http_post, wait_until};
use crate::support::mlflow::{log_pyfunc_model, MlflowServer, ModelServer};
use crate::support::scrape::{to_labels, Scrape};
use crate::support::{now_ms, write_file};

const MODEL: &str = "churn-model";
const ALIAS: &str = "champion";
const INTERVAL_MS: i64 = 300;
const TIMEOUT_MS: i64 = 300;
const SECRET_VAR: &str = "CHURN_PROBE_AUTHORIZATION";
const SECRET: &str = "Bearer probe-tok-Wm4-never-print";
const REASONS: [&str; 5] = ["timeout", "connect", "tls", "status", "body"];

/// The labels of the churn probe's success and duration series.
const CHURN: &[(&str, &str)] = &[("probe", "churn"), ("model", MODEL), ("alias", ALIAS)];
const CHURN_NAME: &[(&str, &str)] = &[("probe", "churn")];

/// A series' value, if present.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.get(name)?.get(&to_labels(labels)).copied()
}

fn failures(s: &Scrape, probe: &str, reason: &str) -> f64 {
    s.get(
        "mlflow_probe_failures_total",
        &[("probe", probe), ("reason", reason)],
    )
}

/// A row of `probe_outages`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredOutage {
    probe: String,
    started_ms: i64,
    ended_ms: Option<i64>,
    reason: String,
}

/// A row of `probe_totals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredTotals {
    uptime_ms: i64,
    outage_ms: i64,
    outages: i64,
    observed_ms: i64,
    open_since_ms: Option<i64>,
}

fn open_store(store: &Path) -> rusqlite::Connection {
    let c =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Every stored outage, oldest first.
fn stored_outages(store: &Path) -> Vec<StoredOutage> {
    let c = open_store(store);
    let mut q = c
        .prepare(
            "SELECT probe, started_ms, ended_ms, reason FROM probe_outages ORDER BY started_ms, id",
        )
        .unwrap();
    let rows = q
        .query_map([], |r| {
            Ok(StoredOutage {
                probe: r.get(0)?,
                started_ms: r.get(1)?,
                ended_ms: r.get(2)?,
                reason: r.get(3)?,
            })
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn stored_totals(store: &Path, probe: &str) -> Option<StoredTotals> {
    let c = open_store(store);
    let mut q = c
        .prepare(
            "SELECT uptime_ms, outage_ms, outages, observed_ms, open_since_ms FROM probe_totals WHERE probe = ?",
        )
        .unwrap();
    let mut rows = q
        .query_map([probe], |r| {
            Ok(StoredTotals {
                uptime_ms: r.get(0)?,
                outage_ms: r.get(1)?,
                outages: r.get(2)?,
                observed_ms: r.get(3)?,
                open_since_ms: r.get(4)?,
            })
        })
        .unwrap();
    rows.next().map(Result::unwrap)
}

/// A temporary folder for the logs and the store, kept and named on stderr when the test fails.
struct KeepOnFailure(Option<tempfile::TempDir>);

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("logs and store kept in {}", dir.keep().display());
            }
        }
    }
}

/// SIGTERM, then a clean exit within 10 s (the exporter saves the probes' totals on the way out).
fn stop_gracefully(exporter: &mut ExporterProcess) {
    let killed = Command::new("kill")
        .args(["-TERM", &exporter.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    wait_until(Duration::from_secs(10), "exit after SIGTERM", || {
        status = exporter.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(
        status.unwrap().success(),
        "exit status {status:?}: {}",
        exporter.stderr()
    );
}

/// Scrapes until the churn probe has a result; returns the time it was seen (an upper bound of the
/// first probe's start).
fn first_churn_result(exporter: &ExporterProcess, scrapes: &mut Vec<String>) -> i64 {
    let mut seen = None;
    wait_until(
        Duration::from_secs(20),
        "the churn probe's first result",
        || {
            let s = exporter.scrape();
            scrapes.push(s.text.clone());
            let present = value(&s, "mlflow_probe_success", CHURN).is_some();
            seen = present.then(now_ms);
            present
        },
    );
    seen.unwrap()
}

#[test]
fn probes_a_real_model_server_and_times_its_outage_exactly() {
    let begin = Instant::now();
    let mlflow = MlflowServer::start();
    let logged = log_pyfunc_model(&mlflow.url, MODEL, ALIAS);
    assert_eq!(logged["model_uri"], format!("models:/{MODEL}@{ALIAS}"));
    assert_eq!(logged["version"], 1);
    assert_eq!(
        logged["run_id"].as_str().map(str::len),
        Some(32),
        "{logged}"
    );
    let model_uri = logged["model_uri"].as_str().unwrap();
    let keep = KeepOnFailure(Some(tempfile::tempdir().unwrap()));
    let dir = keep.0.as_ref().unwrap();
    let mut model = ModelServer::start(dir.path(), &mlflow.url, model_uri);
    eprintln!(
        "model {model_uri} served at {} after {:?}",
        model.url,
        begin.elapsed()
    );

    // The payload the probe sends and the answer MLflow 3's scoring server gives it.
    let r = http_post(
        &model.addr,
        "/invocations",
        &[("Content-Type", "application/json")],
        br#"{"inputs": [[1.0, 2.0]]}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer, serde_json::json!({"predictions": [3.0]}));

    let store = dir.path().join("events.db");
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            r#"mlflow:
  tracking_uri: {mlflow}
probes:
  interval: {INTERVAL_MS}ms
  timeout: {TIMEOUT_MS}ms
  targets:
    - name: churn
      url: {model}/invocations
      headers:
        Authorization: {{env: {SECRET_VAR}}}
      body: {{inputs: [[1.0, 2.0]]}}
      expect:
        status: [200]
        json_path: "$.predictions[0]"
        body_contains: "3.0"
      model: {MODEL}
      alias: {ALIAS}
"#,
            mlflow = mlflow.url,
            model = model.url,
        ),
    );
    let args = [
        "--config.file",
        config.to_str().unwrap(),
        "--log.level",
        "debug",
    ];
    let env = [(SECRET_VAR, SECRET)];
    let mut scrapes = Vec::new();
    let mut logs = Vec::new();

    // The built-in probe's series: no model, no alias.
    let mlflow_probe = [("probe", "mlflow"), ("model", ""), ("alias", "")];

    // ── First run: the endpoint is up. ──
    let spawned_1 = now_ms();
    let mut exporter = ExporterProcess::start_on_store(dir.path(), &store, &args, &env);
    exporter.wait_ready();
    let seen_1 = first_churn_result(&exporter, &mut scrapes);
    // Two successes make up time.
    let mut s = exporter.scrape();
    wait_until(
        Duration::from_secs(10),
        "up time of the churn probe",
        || {
            s = exporter.scrape();
            scrapes.push(s.text.clone());
            // The built-in probe of the tracking server's /health succeeds too.
            s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME) > 0.0
                && value(&s, "mlflow_probe_success", &mlflow_probe) == Some(1.0)
        },
    );
    assert_eq!(s.get("mlflow_probe_success", CHURN), 1.0);
    assert_eq!(s.get("mlflow_probe_http_status_code", CHURN_NAME), 200.0);
    let count = s.get("mlflow_probe_duration_seconds_count", CHURN);
    assert!(count >= 2.0, "{count}");
    assert_eq!(
        s.get(
            "mlflow_probe_duration_seconds_bucket",
            &[CHURN, &[("le", "+Inf")]].concat()
        ),
        count
    );
    let sum = s.get("mlflow_probe_duration_seconds_sum", CHURN);
    assert!(
        sum > 0.0 && sum < count * TIMEOUT_MS as f64 / 1000.0,
        "{sum}"
    );
    for reason in REASONS {
        assert_eq!(failures(&s, "churn", reason), 0.0, "{reason}");
    }
    assert_eq!(s.get("mlflow_probe_outages_total", CHURN_NAME), 0.0);
    assert_eq!(s.get("mlflow_probe_outage_seconds_total", CHURN_NAME), 0.0);
    let uptime_up = s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME);
    assert!(uptime_up > 0.0);
    assert_eq!(
        s.get("mlflow_probe_http_status_code", &[("probe", "mlflow")]),
        200.0
    );
    assert!(s.get("mlflow_probe_duration_seconds_count", &mlflow_probe) >= 1.0);
    // Plain HTTP: no certificate to report.
    assert!(s
        .family("mlflow_probe_tls_cert_expiry_timestamp_seconds")
        .is_empty());
    assert_eq!(stored_outages(&store), vec![]);

    // ── The model server goes away. ──
    let kill_ms = now_ms();
    model.stop();
    let closed_ms = now_ms();
    let mut down = exporter.scrape();
    wait_until(Duration::from_secs(10), "the outage of churn", || {
        down = exporter.scrape();
        scrapes.push(down.text.clone());
        down.get("mlflow_probe_outages_total", CHURN_NAME) == 1.0
            && down.get("mlflow_probe_success", CHURN) == 0.0
    });
    assert_eq!(down.get("mlflow_probe_http_status_code", CHURN_NAME), 0.0);
    assert!(failures(&down, "churn", "connect") >= 1.0);
    for reason in ["timeout", "tls", "status", "body"] {
        assert_eq!(failures(&down, "churn", reason), 0.0, "{reason}");
    }
    // Opened in the store with the totals of that moment (written right after the metric changed).
    let mut opened = Vec::new();
    wait_until(Duration::from_secs(10), "the outage stored", || {
        opened = stored_outages(&store);
        !opened.is_empty()
    });
    assert_eq!(opened.len(), 1, "{opened:?}");
    let started_ms = opened[0].started_ms;
    assert_eq!(
        opened[0],
        StoredOutage {
            probe: "churn".into(),
            started_ms,
            ended_ms: None,
            reason: "connect".into(),
        }
    );
    // Dated by the first failed probe: one sent after the kill, or at most one in flight then.
    assert!(
        started_ms >= kill_ms - TIMEOUT_MS,
        "outage started at {started_ms}, server killed at {kill_ms}"
    );
    assert!(
        started_ms <= closed_ms + 3 * INTERVAL_MS,
        "outage started at {started_ms}, port closed at {closed_ms}"
    );
    let at_open = stored_totals(&store, "churn").expect("totals saved with the outage");
    assert_eq!(at_open.outages, 1);
    assert_eq!(at_open.open_since_ms, Some(started_ms));
    assert_eq!(at_open.outage_ms, at_open.observed_ms - started_ms);
    // Up from the first probe to the first failure: that first probe is dated within this run.
    let first_probe_1 = started_ms - at_open.uptime_ms;
    assert!(
        (spawned_1..=seen_1).contains(&first_probe_1),
        "first probe at {first_probe_1}, exporter started at {spawned_1}, result seen at {seen_1}"
    );

    // While down, up time and latency stand still (a refused connection is not latency); outage time grows.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS as u64));
    let still_down = exporter.scrape();
    scrapes.push(still_down.text.clone());
    assert_eq!(still_down.get("mlflow_probe_success", CHURN), 0.0);
    assert_eq!(
        still_down.get("mlflow_probe_outages_total", CHURN_NAME),
        1.0
    );
    assert_eq!(
        still_down.get("mlflow_probe_uptime_seconds_total", CHURN_NAME),
        down.get("mlflow_probe_uptime_seconds_total", CHURN_NAME)
    );
    assert_eq!(
        still_down.get("mlflow_probe_uptime_seconds_total", CHURN_NAME),
        at_open.uptime_ms as f64 / 1000.0
    );
    assert_eq!(
        still_down.get("mlflow_probe_duration_seconds_count", CHURN),
        down.get("mlflow_probe_duration_seconds_count", CHURN)
    );
    assert!(
        still_down.get("mlflow_probe_outage_seconds_total", CHURN_NAME)
            > down.get("mlflow_probe_outage_seconds_total", CHURN_NAME)
    );
    assert!(failures(&still_down, "churn", "connect") > failures(&down, "churn", "connect"));
    eprintln!("outage seen after {:?}", begin.elapsed());

    // ── The model server comes back on the same port. ──
    let restart_ms = now_ms();
    model.restart();
    let up_ms = now_ms();
    wait_until(Duration::from_secs(10), "churn up again", || {
        let s = exporter.scrape();
        scrapes.push(s.text.clone());
        s.get("mlflow_probe_success", CHURN) == 1.0
    });
    let mut closed = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "the outage closed in the store",
        || {
            closed = stored_outages(&store);
            closed.iter().all(|o| o.ended_ms.is_some())
        },
    );
    assert_eq!(closed.len(), 1, "{closed:?}");
    let ended_ms = closed[0].ended_ms.unwrap();
    assert_eq!(
        closed[0],
        StoredOutage {
            probe: "churn".into(),
            started_ms,
            ended_ms: Some(ended_ms),
            reason: "connect".into(),
        }
    );
    // Closed by the first successful probe: after the server started again, soon after it answered.
    assert!(
        ended_ms > restart_ms,
        "outage ended at {ended_ms}, server restarted at {restart_ms}"
    );
    assert!(
        ended_ms <= up_ms + 3 * INTERVAL_MS,
        "outage ended at {ended_ms}, server answering at {up_ms}"
    );
    let outage_seconds = (ended_ms - started_ms) as f64 / 1000.0;
    eprintln!(
        "outage of {outage_seconds} s: opened {} ms after the kill ({} ms after the port closed), \
         closed {} ms after the restart ({} ms after the server answered); test time {:?}",
        started_ms - kill_ms,
        started_ms - closed_ms,
        ended_ms - restart_ms,
        ended_ms - up_ms,
        begin.elapsed()
    );
    let s = exporter.scrape();
    scrapes.push(s.text.clone());
    assert_eq!(s.get("mlflow_probe_outages_total", CHURN_NAME), 1.0);
    assert_eq!(
        s.get("mlflow_probe_outage_seconds_total", CHURN_NAME),
        outage_seconds
    );
    assert_eq!(s.get("mlflow_probe_http_status_code", CHURN_NAME), 200.0);
    let uptime_back = s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME);
    assert!(uptime_back >= at_open.uptime_ms as f64 / 1000.0);
    // Up time resumes.
    wait_until(Duration::from_secs(10), "up time growing again", || {
        let s = exporter.scrape();
        scrapes.push(s.text.clone());
        s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME) > uptime_back
    });
    let last_1 = exporter.scrape();
    scrapes.push(last_1.text.clone());
    assert_eq!(
        last_1.get("mlflow_probe_outage_seconds_total", CHURN_NAME),
        outage_seconds
    );

    // ── A graceful stop saves the totals. ──
    stop_gracefully(&mut exporter);
    logs.push(exporter.stderr());
    let saved_1 = stored_totals(&store, "churn").unwrap();
    assert_eq!(saved_1.outages, 1);
    assert_eq!(saved_1.outage_ms, ended_ms - started_ms);
    assert_eq!(saved_1.open_since_ms, None);
    assert!(
        saved_1.uptime_ms as f64 / 1000.0
            >= last_1.get("mlflow_probe_uptime_seconds_total", CHURN_NAME)
    );
    // Up time and outage time cover the whole run from the first probe to the last, exactly.
    let first_probe = saved_1.observed_ms - saved_1.uptime_ms - saved_1.outage_ms;
    assert_eq!(first_probe, first_probe_1);
    let log = &logs[0];
    for needle in [
        "probe=churn",
        "endpoint down: outage opened",
        "endpoint up again: outage closed",
        "probe failed",
        "reason=connect",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log: {log}");
    }
    assert!(
        log.contains(&format!("outage_seconds={outage_seconds}")),
        "outage_seconds={outage_seconds} not in the log: {log}"
    );

    // ── Second run on the same store: the history is durable. ──
    let spawned_2 = now_ms();
    let mut exporter = ExporterProcess::start_on_store(dir.path(), &store, &args, &env);
    exporter.wait_ready();
    let s = exporter.scrape();
    scrapes.push(s.text.clone());
    // The counters show from the start, restored.
    assert_eq!(s.get("mlflow_probe_outages_total", CHURN_NAME), 1.0);
    assert_eq!(
        s.get("mlflow_probe_outage_seconds_total", CHURN_NAME),
        outage_seconds
    );
    assert!(
        s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME) >= saved_1.uptime_ms as f64 / 1000.0
    );
    let seen_2 = first_churn_result(&exporter, &mut scrapes);
    let mut s = exporter.scrape();
    wait_until(
        Duration::from_secs(10),
        "up time growing after the restart",
        || {
            s = exporter.scrape();
            scrapes.push(s.text.clone());
            s.get("mlflow_probe_uptime_seconds_total", CHURN_NAME)
                > saved_1.uptime_ms as f64 / 1000.0
        },
    );
    assert_eq!(s.get("mlflow_probe_success", CHURN), 1.0);
    assert_eq!(s.get("mlflow_probe_outages_total", CHURN_NAME), 1.0);
    assert_eq!(
        s.get("mlflow_probe_outage_seconds_total", CHURN_NAME),
        outage_seconds
    );
    for reason in REASONS {
        assert_eq!(failures(&s, "churn", reason), 0.0, "{reason}");
    }
    stop_gracefully(&mut exporter);
    logs.push(exporter.stderr());
    let saved_2 = stored_totals(&store, "churn").unwrap();
    assert_eq!(
        (saved_2.outages, saved_2.outage_ms, saved_2.open_since_ms),
        (1, ended_ms - started_ms, None)
    );
    // The time the exporter was down is counted nowhere: the new up time starts at this run's first probe.
    let first_probe_2 = saved_2.observed_ms - (saved_2.uptime_ms - saved_1.uptime_ms);
    assert!(
        (spawned_2..=seen_2).contains(&first_probe_2),
        "first probe at {first_probe_2}, exporter started at {spawned_2}, result seen at {seen_2}"
    );
    assert_eq!(stored_outages(&store), closed);

    // The header's value never shows.
    for (i, log) in logs.iter().enumerate() {
        assert!(!log.contains(SECRET), "secret in the log of run {}", i + 1);
        assert!(
            !log.contains("probe-tok-Wm4"),
            "part of the secret in the log of run {}",
            i + 1
        );
    }
    for text in &scrapes {
        assert!(!text.contains("probe-tok-Wm4"), "secret in /metrics");
    }
    eprintln!("{} scrapes, done in {:?}", scrapes.len(), begin.elapsed());
}
