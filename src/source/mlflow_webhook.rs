//! MLflow's webhook deliveries (MLflow ≥ 3.3): the signature check (`X-MLflow-Signature: v1,<base64
//! HMAC-SHA256 of "{delivery_id}.{timestamp}.{body}">`), the freshness window, and the payload.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Deliveries older (or further in the future) than this are refused.
pub const MAX_AGE_S: i64 = 300;

#[derive(Debug, Deserialize)]
pub struct Payload {
    pub entity: String,
    pub action: String,
    /// ISO-8601, UTC.
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub data: serde_json::Value,
    /// The workspace of the change, on a workspace-enabled MLflow 3.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// The delivery headers, as sent.
pub struct Delivery<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// `data` of an alias event: `{name, alias, version}`.
#[derive(Debug, serde::Deserialize)]
pub struct AliasData {
    pub name: String,
    pub alias: String,
    #[serde(default)]
    pub version: Option<String>,
    /// Where a server puts the workspace in the data rather than beside it.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// Verifies a delivery's signature and age; returns its timestamp in ms. The message says what is
/// wrong without echoing anything secret.
pub fn verify(secret: &[u8], d: &Delivery<'_>, body: &[u8], now_ms: i64) -> Result<i64, String> {
    if d.id.is_empty() {
        return Err("X-MLflow-Delivery-Id is missing".into());
    }
    let ts: i64 = d
        .timestamp
        .parse()
        .map_err(|_| format!("X-MLflow-Timestamp {:?} is not Unix seconds", d.timestamp))?;
    let sig = d
        .signature
        .strip_prefix("v1,")
        .ok_or("X-MLflow-Signature is missing or not of the form v1,<base64>")?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| "X-MLflow-Signature is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(d.id.as_bytes());
    mac.update(b".");
    mac.update(d.timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Constant time.
    mac.verify_slice(&sig).map_err(|_| {
        "signature does not match: check webhooks.mlflow.secret against the webhook's secret"
    })?;
    if (now_ms / 1000 - ts).abs() > MAX_AGE_S {
        return Err(format!(
            "delivery timestamp {ts} is more than {MAX_AGE_S} s from now; refused as a replay"
        ));
    }
    Ok(ts * 1000)
}

/// The signature header MLflow would send, for tests and tools.
pub fn sign(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_with_the_secret_and_the_clock() {
        let body = br#"{"entity":"model_version_alias","action":"created"}"#;
        let now = 1_800_000_000_000;
        let ts = "1800000000";
        let sig = sign(b"s3cret", "d-1", ts, body);
        let ok = Delivery {
            id: "d-1",
            timestamp: ts,
            signature: &sig,
        };
        assert_eq!(verify(b"s3cret", &ok, body, now), Ok(1_800_000_000_000));
        assert!(verify(b"other", &ok, body, now)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify(b"s3cret", &ok, b"{}", now)
            .unwrap_err()
            .contains("does not match"));
        let moved = Delivery { id: "d-2", ..ok };
        assert!(
            verify(b"s3cret", &moved, body, now).is_err(),
            "the id is signed too"
        );
        assert!(verify(b"s3cret", &ok, body, now + 301_000)
            .unwrap_err()
            .contains("replay"));
        assert!(verify(b"s3cret", &ok, body, now + 299_000).is_ok());
        let bad = Delivery {
            signature: "v2,abc",
            ..ok
        };
        assert!(verify(b"s3cret", &bad, body, now)
            .unwrap_err()
            .contains("v1,"));
    }

    #[test]
    fn a_known_vector() {
        // Computed independently with Python's hmac module.
        let sig = sign(b"key", "The quick brown fox", "jumps over", b"the lazy dog");
        assert_eq!(sig, "v1,zqZ4BHIaZqLRQV6djjE8NInd5Cji4Xmc/TDceY6qA0Y=");
    }
}
