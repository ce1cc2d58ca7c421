//! Alertmanager's webhook payload (version 4): each firing alert opens an incident, each resolved one
//! closes it. An alert is one incident per firing: its fingerprint and start time name it, so
//! Alertmanager's repeated notifications are the same incident.

use std::collections::HashMap;

use serde::Deserialize;

use crate::delivery::{Event, Kind, Source};

#[derive(Debug, Deserialize)]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// Events of a payload, and how many alerts carried no model label (not attributable, so ignored).
/// With `workspaces` (a workspace-enabled MLflow), an alert's `workspace` label (`default` when
/// absent) names the model's workspace, as this exporter's own series label it.
pub fn events(
    payload: &Payload,
    model_label: &str,
    severity_label: &str,
    workspaces: bool,
) -> Result<(Vec<Event>, usize), String> {
    if payload.version != "4" {
        return Err(format!(
            "payload version {:?} is not supported; Alertmanager sends version \"4\"",
            payload.version
        ));
    }
    let mut events = Vec::new();
    let mut ignored = 0;
    for (i, a) in payload.alerts.iter().enumerate() {
        let Some(model) = a.labels.get(model_label).filter(|m| !m.is_empty()) else {
            ignored += 1;
            continue;
        };
        let scoped;
        let model = match workspaces {
            true => {
                let ws = a.labels.get("workspace").map(String::as_str);
                scoped = crate::delivery::model_key(true, ws, model);
                &scoped
            }
            false => model,
        };
        let severity = a.labels.get(severity_label).map_or("", String::as_str);
        let started = parse_time(&a.starts_at)
            .map_err(|e| format!("alerts[{i}].startsAt {:?}: {e}", a.starts_at))?;
        let fingerprint = if a.fingerprint.is_empty() {
            let mut labels: Vec<String> =
                a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            labels.join(",")
        } else {
            a.fingerprint.clone()
        };
        let id = format!("{fingerprint}@{started}");
        let (kind, at) = match a.status.as_str() {
            "firing" => (Kind::IncidentOpened, started),
            "resolved" => (
                Kind::IncidentResolved,
                parse_time(&a.ends_at)
                    .map_err(|e| format!("alerts[{i}].endsAt {:?}: {e}", a.ends_at))?,
            ),
            other => {
                return Err(format!(
                    "alerts[{i}].status {other:?} is neither firing nor resolved"
                ))
            }
        };
        // A resolved alert also says it was open: record the opening too (once, by its key), so an
        // incident whose firing notification was lost still counts.
        if kind == Kind::IncidentResolved {
            events.push(Event::incident(
                Kind::IncidentOpened,
                Source::Alertmanager,
                &id,
                model,
                severity,
                started,
            ));
        }
        events.push(Event::incident(
            kind,
            Source::Alertmanager,
            &id,
            model,
            severity,
            at,
        ));
    }
    Ok((events, ignored))
}

/// RFC 3339 time to ms since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("not an RFC 3339 time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(alerts: serde_json::Value) -> Payload {
        serde_json::from_value(
            serde_json::json!({"version": "4", "status": "firing", "alerts": alerts}),
        )
        .unwrap()
    }

    #[test]
    fn firing_opens_and_resolved_closes_the_same_incident() {
        let firing = payload(serde_json::json!([{
            "status": "firing", "labels": {"alertname": "HighLatency", "model": "churn", "severity": "page"},
            "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc"}]));
        let (e, ignored) = events(&firing, "model", "severity", false).unwrap();
        assert_eq!(ignored, 0);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].kind, e[0].model.as_str(), e[0].severity.as_deref()),
            (Kind::IncidentOpened, "churn", Some("page"))
        );
        assert_eq!(e[0].at_ms, 1_795_341_600_000);
        let resolved = payload(serde_json::json!([{
            "status": "resolved", "labels": {"model": "churn", "severity": "page"},
            "startsAt": "2026-11-22T10:00:00Z", "endsAt": "2026-11-22T10:30:00.5Z", "fingerprint": "abc"}]));
        let (r, _) = events(&resolved, "model", "severity", false).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].dedup_key, e[0].dedup_key,
            "the opening it implies is the same event"
        );
        assert_eq!(
            (r[1].kind, r[1].at_ms),
            (Kind::IncidentResolved, 1_795_343_400_500)
        );
        assert_eq!(r[1].incident, e[0].incident);
    }

    #[test]
    fn unattributable_alerts_are_ignored_and_bad_payloads_refused() {
        let p = payload(
            serde_json::json!([{"status": "firing", "labels": {"alertname": "X"}, "startsAt": "2026-11-22T10:00:00Z"}]),
        );
        assert_eq!(events(&p, "model", "severity", false).unwrap(), (vec![], 1));
        let mut v3 = payload(serde_json::json!([]));
        v3.version = "3".into();
        assert!(events(&v3, "model", "severity", false)
            .unwrap_err()
            .contains("version"));
        let bad = payload(
            serde_json::json!([{"status": "firing", "labels": {"model": "m"}, "startsAt": "yesterday"}]),
        );
        assert!(events(&bad, "model", "severity", false)
            .unwrap_err()
            .contains("alerts[0].startsAt"));
    }
}
