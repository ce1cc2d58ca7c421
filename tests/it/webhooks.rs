//! Incidents and deployments pushed to the exporter: a real Alertmanager sends a firing and then a
//! resolved alert through the exporter's webhook (incident counted, recovery timed exactly), and
//! CI/CD events are taken or refused (token, size, bad JSON) with nothing recorded when refused.

use std::time::Duration;

use crate::support::alertmanager::Alertmanager;
use crate::support::exporter::{stored_events, ExporterProcess};
use crate::support::http::{free_port, http_get, http_post, wait_until};
use crate::support::scrape::to_labels;
use crate::support::{now_ms, write_file};

const AM_TOKEN: &str = "am-token-Q7x";
const CI_TOKEN: &str = "ci-token-W2k";

/// The exporter with both receivers on; MLflow is not needed to take events (none listens here).
fn exporter(dir: &std::path::Path) -> ExporterProcess {
    let config = write_file(
        dir,
        "exporter.yaml",
        &format!(
            "webhooks:\n  alertmanager: {{enabled: true, token: {AM_TOKEN}}}\n  events: {{enabled: true, token: {CI_TOKEN}}}\n  max_body_bytes: 4096\n"
        ),
    );
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut e = ExporterProcess::start(
        dir,
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.sync-interval=1h",
        ],
        &[
            ("MLFLOW_TRACKING_URI", &url),
            ("MLFLOW_EXPORTER_MLFLOW__MAX_RETRIES", "0"),
        ],
    );
    wait_until(
        Duration::from_secs(30),
        "the exporter's HTTP server",
        || http_get(&e.addr, "/-/healthy", &[]).is_ok_and(|r| r.status == 200),
    );
    assert!(e.child.try_wait().unwrap().is_none());
    e
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

#[test]
fn alertmanager_opens_and_resolves_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(dir.path());
    let am = Alertmanager::start(&format!(
        r#"
route:
  receiver: exporter
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: exporter
    webhook_configs:
      - url: http://{}/api/v1/webhooks/alertmanager
        send_resolved: true
        http_config:
          authorization: {{credentials: {AM_TOKEN}}}
"#,
        exporter.addr
    ));
    // Whole seconds: Alertmanager keeps the times it is given.
    let start = now_ms() / 1000 * 1000 - 600_000;
    let alert = |ends: Option<i64>| {
        let mut a = serde_json::json!({
            "labels": {"alertname": "ChurnModelErrors", "model": "churn-model", "severity": "page"},
            "startsAt": rfc3339(start),
        });
        if let Some(e) = ends {
            a["endsAt"] = serde_json::json!(rfc3339(e));
        }
        serde_json::to_vec(&[a]).unwrap()
    };
    let post = |body: Vec<u8>| {
        let r = http_post(
            &am.addr,
            "/api/v2/alerts",
            &[("Content-Type", "application/json")],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let incidents = |name: &str| {
        exporter
            .scrape()
            .family(name)
            .get(&to_labels(&[
                ("model", "churn-model"),
                ("severity", "page"),
            ]))
            .copied()
    };

    post(alert(None));
    wait_until(
        Duration::from_secs(30),
        "the firing alert at the exporter",
        || incidents("mlflow_incidents_open") == Some(1.0),
    );
    assert_eq!(incidents("mlflow_incidents_total"), Some(1.0));

    // Resolved 7 min 30 s after it started.
    post(alert(Some(start + 450_000)));
    wait_until(
        Duration::from_secs(30),
        "the resolved alert at the exporter",
        || incidents("mlflow_incidents_open") == Some(0.0),
    );
    let s = exporter.scrape();
    let labels = [("model", "churn-model"), ("severity", "page")];
    assert_eq!(s.get("mlflow_incidents_total", &labels), 1.0);
    // Time to restore is by the model's team and, for the models the history saw serving, by
    // model: this one it never saw (no MLflow here), so its team is unknown and it is __other__.
    let by_team = [("team", ""), ("model", "__other__"), ("severity", "page")];
    assert_eq!(
        s.get("mlflow_incident_recovery_seconds_count", &by_team),
        1.0
    );
    assert_eq!(
        s.get("mlflow_incident_recovery_seconds_sum", &by_team),
        450.0
    );
    assert_eq!(
        s.get(
            "mlflow_incident_recovery_seconds_bucket",
            &[&by_team[..], &[("le", "900")]].concat()
        ),
        1.0
    );
    assert_eq!(
        s.get(
            "mlflow_incident_recovery_seconds_bucket",
            &[&by_team[..], &[("le", "60")]].concat()
        ),
        0.0
    );
    assert_eq!(
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "alertmanager"), ("outcome", "rejected")]
        ),
        0.0
    );
}

#[test]
fn ci_events_are_taken_once_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(dir.path());
    let auth = format!("Bearer {CI_TOKEN}");
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        http_post(&exporter.addr, "/api/v1/events", headers, body).unwrap()
    };
    let good = |body: serde_json::Value| {
        let r = post(
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };

    let deploy = serde_json::json!({"type": "deployment", "model": "m", "alias": "prod", "version": 2, "id": "ci-1", "at": 1_800_000_000});
    assert_eq!(
        good(deploy.clone()),
        serde_json::json!({"recorded": 1, "duplicates": 0})
    );
    // The same deployment again (a retried CI job): nothing new.
    assert_eq!(
        good(deploy),
        serde_json::json!({"recorded": 0, "duplicates": 1})
    );
    // Back to version 1: a rollback, 60 s after the deployment it undoes.
    let back = serde_json::json!({"type": "deployment", "model": "m", "alias": "prod", "version": 1, "id": "ci-2", "at": 1_800_000_060});
    assert_eq!(good(back)["recorded"], 1);
    let open = serde_json::json!({"type": "incident_opened", "model": "m", "id": "inc-1", "severity": "sev2", "at": "2027-01-15T08:00:00Z"});
    assert_eq!(good(open.clone())["recorded"], 1);
    assert_eq!(good(open)["duplicates"], 1);
    let resolved = serde_json::json!({"type": "incident_resolved", "model": "m", "id": "inc-1", "severity": "sev2", "at": "2027-01-15T09:30:00Z"});
    assert_eq!(good(resolved)["recorded"], 1);

    // Refused, each with a JSON error, and nothing recorded.
    let body = serde_json::to_vec(
        &serde_json::json!({"type": "incident_opened", "model": "m", "id": "inc-2"}),
    )
    .unwrap();
    let r = post(&[], &body);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("bearer token"), "{}", r.text());
    let r = post(&[("Authorization", "Bearer wrong-token-W2k")], &body);
    assert_eq!(r.status, 401);
    let r = post(
        &[("Authorization", &auth)],
        b"{\"type\": \"incident_opened\", \"model\": ",
    );
    assert_eq!(r.status, 400);
    let err: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("not an event"),
        "{err}"
    );
    let r = post(
        &[("Authorization", &auth)],
        br#"{"type": "deployment", "model": "m", "id": "x", "version": 3}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("alias"), "{}", r.text());
    let big = format!(
        r#"{{"type": "incident_opened", "model": "m", "id": "{}"}}"#,
        "x".repeat(5000)
    );
    let r = post(&[("Authorization", &auth)], big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"].is_string());

    // Published within a second or so (re-encoded at most once a second).
    let labels = [("model", "m"), ("alias", "prod")];
    // m was deployed: shown apart in the histograms, of no team (no MLflow to say).
    let restore = to_labels(&[("team", ""), ("model", "m"), ("severity", "sev2")]);
    wait_until(Duration::from_secs(10), "the events in /metrics", || {
        exporter
            .scrape()
            .family("mlflow_incident_recovery_seconds_count")
            .get(&restore)
            == Some(&1.0)
    });
    let s = exporter.scrape();
    assert_eq!(s.get("mlflow_model_deployments_total", &labels), 2.0);
    assert_eq!(s.get("mlflow_model_rollbacks_total", &labels), 1.0);
    assert_eq!(
        s.get(
            "mlflow_model_rollback_recovery_seconds_sum",
            &[("team", ""), ("model", "m")]
        ),
        60.0
    );
    assert_eq!(
        s.get("mlflow_model_deployed_timestamp_seconds", &labels),
        1_800_000_060.0
    );
    let inc = [("model", "m"), ("severity", "sev2")];
    assert_eq!(s.get("mlflow_incidents_total", &inc), 1.0);
    assert_eq!(s.get("mlflow_incidents_open", &inc), 0.0);
    assert_eq!(
        s.get(
            "mlflow_incident_recovery_seconds_sum",
            &[("team", ""), ("model", "m"), ("severity", "sev2")]
        ),
        5400.0
    );
    // The configured severities exist at 0 for a served model from its first sight.
    for sev in ["critical", "warning"] {
        assert_eq!(
            s.get(
                "mlflow_incidents_total",
                &[("model", "m"), ("severity", sev)]
            ),
            0.0
        );
    }
    let events = |outcome| {
        s.get(
            "mlflow_exporter_events_total",
            &[("source", "api"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        [events("recorded"), events("duplicate"), events("rejected")],
        [4.0, 2.0, 5.0]
    );

    // The audit trail: four events, in order.
    let store = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .unwrap();
    let kinds: Vec<String> = stored_events(&store)
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "deployment",
            "deployment",
            "incident_opened",
            "incident_resolved"
        ]
    );
    for secret in [AM_TOKEN, CI_TOKEN] {
        assert!(!exporter.stderr().contains(secret), "a token in the log");
    }
}
