//! A real MLflow webhook: registered by `register-webhook`, MLflow delivers an alias move to the
//! exporter with a valid signature and it is recorded at MLflow's time, with the lead time of a
//! version no sync has seen yet (read from MLflow); forged, stale and replayed deliveries are
//! refused and recorded nowhere.

use std::process::Command;
use std::time::Duration;

use crate::support::exporter::ExporterProcess;
use crate::support::http::{http_post, wait_until};
use crate::support::mlflow::MlflowServer;
use crate::support::scrape::to_labels;
use crate::support::{now_ms, venv_bin, write_file};
use mlflow_exporter::source::mlflow_webhook::sign;

const SECRET: &str = "whsec-Tg4-never-print";

#[test]
fn mlflow_delivers_alias_moves_and_forgeries_are_refused() {
    let mlflow = MlflowServer::start_with_env(&[
        ("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true"),
        ("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https"),
        // MLflow caches each event's webhook list for 60 s: the seeding already cached "none".
        ("MLFLOW_WEBHOOK_CACHE_TTL", "0"),
    ]);
    mlflow.seed(now_ms() / 1000 * 1000, "initial");
    let config = write_file(
        mlflow.dir.path(),
        "exporter.yaml",
        &format!("webhooks:\n  mlflow: {{enabled: true, secret: {SECRET}}}\n"),
    );
    let config = config.to_str().unwrap();
    // One sync at start-up (baselines); after that only the webhook can report the move.
    let mut exporter = ExporterProcess::start(
        mlflow.dir.path(),
        &["--config.file", config, "--mlflow.sync-interval=1h"],
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    );
    exporter.wait_ready();

    let receiver = format!("http://{}/api/v1/webhooks/mlflow", exporter.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"))
        .args([
            "register-webhook",
            "--config.file",
            config,
            "--webhook.url",
            &receiver,
        ])
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("registered webhook"), "{stdout}");

    // A run trained an hour ago, registered as version 4 after the exporter's last sync, becomes
    // the champion (from version 2): only MLflow's webhook reports it, and the exporter reads the
    // version it has not seen from MLflow, so the lead time is known.
    let before = now_ms();
    let moved = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import time, warnings; warnings.simplefilter('ignore'); from mlflow import MlflowClient; \
             c = MlflowClient(); t = int(time.time() * 1000) - 3600000; \
             r = c.create_run(c.get_experiment_by_name('nlp').experiment_id, start_time=t); \
             c.set_terminated(r.info.run_id, end_time=t + 1800000); \
             v = c.create_model_version('churn-model', source='runs:/' + r.info.run_id + '/m', run_id=r.info.run_id); \
             c.set_registered_model_alias('churn-model', 'champion', v.version); \
             print('SERVED', t, v.version, v.creation_timestamp)",
        ])
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let after = now_ms();
    let printed = String::from_utf8_lossy(&moved.stdout);
    let printed: Vec<i64> = printed
        .lines()
        .find_map(|l| l.strip_prefix("SERVED "))
        .unwrap_or_else(|| panic!("no SERVED line in {printed:?}"))
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let (run_start, version, created) = (printed[0], printed[1], printed[2]);
    assert_eq!(version, 4);
    let champion = [("model", "churn-model"), ("alias", "champion")];
    wait_until(
        Duration::from_secs(30),
        "the webhook's deployment in /metrics",
        || {
            exporter
                .scrape()
                .family("mlflow_model_deployments_total")
                .get(&to_labels(&champion))
                == Some(&1.0)
        },
    );
    let s = exporter.scrape();
    // MLflow's own time of the move, between the two ends of the call that made it.
    let at = s.get("mlflow_model_deployed_timestamp_seconds", &champion) * 1000.0;
    assert!(
        at >= (before / 1000 * 1000) as f64 && at <= after as f64,
        "{before} <= {at} <= {after}"
    );
    // Lead time from the run's start to MLflow's time of the move; its parts from the version's
    // creation. churn-model is of team vision, and the first model deployed: shown apart.
    let lead = s.get("mlflow_model_last_lead_time_seconds", &champion);
    assert_eq!(lead, (at - run_start as f64) / 1000.0);
    let by_team = [("team", "vision"), ("model", "churn-model")];
    assert_eq!(s.get("mlflow_model_lead_time_seconds_count", &by_team), 1.0);
    assert_eq!(s.get("mlflow_model_lead_time_seconds_sum", &by_team), lead);
    assert_eq!(
        s.get("mlflow_model_time_to_deploy_seconds_sum", &by_team),
        (at - created as f64) / 1000.0
    );
    assert_eq!(
        s.get("mlflow_model_time_to_register_seconds_sum", &by_team),
        (created - run_start - 1_800_000) as f64 / 1000.0
    );
    let events = |outcome| {
        exporter.scrape().get(
            "mlflow_exporter_events_total",
            &[("source", "mlflow_webhook"), ("outcome", outcome)],
        )
    };
    assert_eq!(events("recorded"), 1.0);

    // Deliveries MLflow did not make.
    let body = br#"{"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-22T11:04:11+00:00", "data": {"name": "churn-model", "alias": "champion", "version": "1"}}"#;
    let now_s = (now_ms() / 1000).to_string();
    let post = |id: &str, ts: &str, sig: &str| {
        http_post(
            &exporter.addr,
            "/api/v1/webhooks/mlflow",
            &[
                ("X-MLflow-Delivery-Id", id),
                ("X-MLflow-Timestamp", ts),
                ("X-MLflow-Signature", sig),
            ],
            body,
        )
        .unwrap()
    };
    let forged = post("d-1", &now_s, &sign(b"not-the-secret", "d-1", &now_s, body));
    assert_eq!(forged.status, 401, "{}", forged.text());
    assert!(
        forged.text().contains("signature does not match"),
        "{}",
        forged.text()
    );
    let stale_ts = (now_ms() / 1000 - 600).to_string();
    let stale = post(
        "d-2",
        &stale_ts,
        &sign(SECRET.as_bytes(), "d-2", &stale_ts, body),
    );
    assert_eq!(stale.status, 401, "{}", stale.text());
    // A valid delivery of a non-serving alias is taken (and ignored); the same delivery again is a replay.
    let other = br#"{"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-22T11:04:11+00:00", "data": {"name": "churn-model", "alias": "challenger", "version": "1"}}"#;
    let signed = sign(SECRET.as_bytes(), "d-3", &now_s, other);
    let send = || {
        http_post(
            &exporter.addr,
            "/api/v1/webhooks/mlflow",
            &[
                ("X-MLflow-Delivery-Id", "d-3"),
                ("X-MLflow-Timestamp", &now_s),
                ("X-MLflow-Signature", &signed),
            ],
            other,
        )
        .unwrap()
    };
    let first = send();
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.text().contains("\"ignored\":1"), "{}", first.text());
    let replay = send();
    assert_eq!(replay.status, 409, "{}", replay.text());

    // Nothing of those was recorded: one deployment, from MLflow.
    std::thread::sleep(Duration::from_millis(1200));
    let s = exporter.scrape();
    assert_eq!(s.get("mlflow_model_deployments_total", &champion), 1.0);
    assert_eq!(events("recorded"), 1.0);
    assert_eq!(events("rejected"), 3.0);
    assert!(!exporter.stderr().contains(SECRET), "the secret in the log");
}
