//! No secret in any output: an exporter given every kind of secret (MLflow credentials, in the
//! variables and in the URL, webhook tokens and signing secret, a basic-auth password) fails to
//! reach MLflow, refuses wrong credentials on every receiver, and serves metrics; its log, its
//! metrics, `check-config` and its error messages are then searched for each secret.

use std::time::Duration;

use crate::support;
use crate::support::exporter::{run_exporter, ExporterProcess};
use crate::support::http::{free_port, http_get, http_post, wait_until};
use crate::support::write_file;

const MLFLOW_PASSWORD: &str = "mlflow-pw-Qe7-never";
const MLFLOW_TOKEN: &str = "mlflow-token-Hb2-never";
const URL_PASSWORD: &str = "url-pw-Lm4-never";
const WEBHOOK_SECRET: &str = "webhook-secret-Tt9-never";
const MLFLOW_RECEIVER_TOKEN: &str = "receiver-token-Pp1-never";
const ALERTMANAGER_TOKEN: &str = "am-token-Ww5-never";
const EVENTS_TOKEN: &str = "events-token-Kk8-never";
const BASIC_PASSWORD: &str = "basic-pw-Rr3-never";
const SECRETS: &[&str] = &[
    MLFLOW_PASSWORD,
    MLFLOW_TOKEN,
    URL_PASSWORD,
    WEBHOOK_SECRET,
    MLFLOW_RECEIVER_TOKEN,
    ALERTMANAGER_TOKEN,
    EVENTS_TOKEN,
    BASIC_PASSWORD,
];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows secret {s}:\n{text}");
    }
}

#[test]
fn no_secret_reaches_the_log_the_metrics_check_config_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash(BASIC_PASSWORD, 4).unwrap();
    let web = write_file(
        dir.path(),
        "web.yml",
        &format!("basic_auth_users:\n  prom: '{hash}'\n"),
    );
    // Nothing listens at the MLflow address: every sync fails and says why.
    let mlflow = format!("http://exporter:{URL_PASSWORD}@127.0.0.1:{}", free_port());
    let env: Vec<(&str, &str)> = vec![
        ("MLFLOW_TRACKING_URI", &mlflow),
        ("MLFLOW_TRACKING_USERNAME", "exporter"),
        ("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD),
        ("MLFLOW_TRACKING_TOKEN", MLFLOW_TOKEN),
        ("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0"),
        ("MLFLOW_EXPORTER_WEBHOOKS__MLFLOW__ENABLED", "true"),
        ("MLFLOW_EXPORTER_WEBHOOKS__MLFLOW__SECRET", WEBHOOK_SECRET),
        (
            "MLFLOW_EXPORTER_WEBHOOKS__MLFLOW__TOKEN",
            MLFLOW_RECEIVER_TOKEN,
        ),
        ("MLFLOW_EXPORTER_WEBHOOKS__ALERTMANAGER__ENABLED", "true"),
        (
            "MLFLOW_EXPORTER_WEBHOOKS__ALERTMANAGER__TOKEN",
            ALERTMANAGER_TOKEN,
        ),
        ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__ENABLED", "true"),
        ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", EVENTS_TOKEN),
    ];
    let exporter = ExporterProcess::start(
        dir.path(),
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--mlflow.sync-interval=1s",
            "--log.level=debug",
        ],
        &env,
    );
    let basic = format!(
        "Basic {}",
        base64_encode(format!("prom:{BASIC_PASSWORD}").as_bytes())
    );
    let auth = [("Authorization", basic.as_str())];
    wait_until(Duration::from_secs(30), "a failed sync counted", || {
        http_get(&exporter.addr, "/metrics", &auth).is_ok_and(|r| {
            r.status == 200
                && r.text().contains(
                    r#"mlflow_exporter_sync_errors_total{reason="connect",workspace=""} 1"#,
                )
        })
    });

    // Wrong credentials on every receiver, and on the metrics.
    for (path, header) in [
        ("/api/v1/webhooks/mlflow", "Bearer wrong"),
        ("/api/v1/webhooks/alertmanager", "Bearer wrong"),
        ("/api/v1/events", "Bearer wrong"),
        ("/metrics", "Basic cHJvbTp3cm9uZw=="),
    ] {
        let r = http_post(&exporter.addr, path, &[("Authorization", header)], b"{}").unwrap();
        assert!(r.status == 401 || r.status == 405, "{path}: {}", r.status);
        assert_clean(&format!("the answer of {path}"), &r.text());
    }
    // Right token, bad signature: refused with a reason that names no secret.
    let r = http_post(
        &exporter.addr,
        "/api/v1/webhooks/mlflow",
        &[
            ("Authorization", &format!("Bearer {MLFLOW_RECEIVER_TOKEN}")),
            ("X-MLflow-Delivery-Id", "d-1"),
            (
                "X-MLflow-Timestamp",
                &(support::now_ms() / 1000).to_string(),
            ),
            ("X-MLflow-Signature", "v1,AAAA"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_clean("the signature refusal", &r.text());

    let metrics = http_get(&exporter.addr, "/metrics", &auth).unwrap().text();
    assert_clean("/metrics", &metrics);
    let landing = http_get(&exporter.addr, "/", &auth).unwrap().text();
    assert_clean("the landing page", &landing);
    drop(exporter);
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    assert!(log.contains("cannot connect to MLflow"), "{log}");
    assert!(log.contains("webhook request refused"), "{log}");
    assert_clean("the log", &log);

    // check-config, valid and not.
    let mut args = vec!["check-config", "--web.config.file", web.to_str().unwrap()];
    let (code, out, err) = run_exporter(&args, &env);
    assert_eq!(code, Some(0), "{err}");
    assert_clean("check-config", &format!("{out}{err}"));
    assert!(out.contains("<redacted>"), "{out}");
    args.push("--mlflow.sync-interval=soon");
    let (code, out, err) = run_exporter(&args, &env);
    assert_eq!(code, Some(2));
    assert_clean("a configuration error", &format!("{out}{err}"));
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
