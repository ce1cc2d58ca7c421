//! Events CI/CD systems post to `POST /api/v1/events`: a deployment of a model's alias, or an
//! incident opened or resolved. The caller's `id` names an incident, so posting it again changes
//! nothing; a deployment is named by the change it makes.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApiKind {
    Deployment,
    IncidentOpened,
    IncidentResolved,
}

/// A time as RFC 3339 text or Unix seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Time {
    Seconds(f64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiEvent {
    #[serde(rename = "type")]
    pub kind: ApiKind,
    pub model: String,
    /// The model's workspace, on a workspace-enabled MLflow 3 (`default` when absent).
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    pub id: String,
    #[serde(default)]
    pub at: Option<Time>,
    #[serde(default)]
    pub severity: Option<String>,
}

impl ApiEvent {
    /// Checks what the types cannot, and returns the event time (`now_ms` when not given).
    pub fn check(&self, now_ms: i64) -> Result<i64, String> {
        if self.model.is_empty() {
            return Err("model must not be empty".into());
        }
        if self.id.is_empty() {
            return Err("id must not be empty".into());
        }
        if self.kind == ApiKind::Deployment
            && (self.alias.as_deref().is_none_or(str::is_empty) || self.version.is_none())
        {
            return Err("a deployment needs alias and version".into());
        }
        match &self.at {
            None => Ok(now_ms),
            Some(Time::Seconds(s)) if s.is_finite() && *s >= 0.0 => Ok((s * 1000.0).round() as i64),
            Some(Time::Seconds(s)) => Err(format!("at {s} is not a time")),
            Some(Time::Text(t)) => {
                super::alertmanager::parse_time(t).map_err(|e| format!("at {t:?}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ApiEvent, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn events_parse_and_check() {
        let e = parse(serde_json::json!({"type": "deployment", "model": "m", "alias": "prod", "version": 3, "id": "ci-1", "at": 1_800_000_000.5})).unwrap();
        assert_eq!(e.check(0), Ok(1_800_000_000_500));
        let e = parse(serde_json::json!({"type": "incident_opened", "model": "m", "id": "inc-9", "at": "2026-11-22T10:00:00Z", "severity": "sev1"})).unwrap();
        assert_eq!(e.check(0), Ok(1_795_341_600_000));
        let e =
            parse(serde_json::json!({"type": "incident_resolved", "model": "m", "id": "inc-9"}))
                .unwrap();
        assert_eq!(e.check(42), Ok(42));
        let e =
            parse(serde_json::json!({"type": "deployment", "model": "m", "id": "x", "version": 1}))
                .unwrap();
        assert!(e.check(0).unwrap_err().contains("alias"));
        assert!(
            parse(serde_json::json!({"type": "rollback", "model": "m", "id": "x"}))
                .unwrap_err()
                .contains("rollback")
        );
        assert!(parse(
            serde_json::json!({"type": "deployment", "model": "m", "id": "x", "colour": 1})
        )
        .unwrap_err()
        .contains("colour"));
        let e = parse(
            serde_json::json!({"type": "incident_opened", "model": "m", "id": "x", "at": "soon"}),
        )
        .unwrap();
        assert!(e.check(0).unwrap_err().contains("soon"));
    }
}
