//! The exporter's own HTTP server: `web.*` (`--web.*` flags), and the listen address syntax.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError, DEFAULT_PORT};

/// The exporter's own HTTP server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Address to listen on (`--web.listen-address`); `:PORT` means every interface.
    pub listen_address: String,
    /// Path of the metrics endpoint (`--web.telemetry-path`).
    pub telemetry_path: String,
    /// exporter-toolkit web config: TLS, basic auth, headers (`--web.config.file`). Re-read when it
    /// or a file it names changes.
    pub config_file: Option<PathBuf>,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Time a client has for a TLS handshake and for each request's head.
    #[serde(with = "humantime_serde")]
    pub read_header_timeout: Duration,
    /// Time a request has from its head to its answer, body included; slower ones get 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen_address: format!(":{DEFAULT_PORT}"),
            telemetry_path: "/metrics".into(),
            config_file: None,
            max_connections: 512,
            read_header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Parses `host:port`, `:port` (every interface) or `[v6]:port`.
pub fn parse_listen_address(addr: &str) -> Result<std::net::SocketAddr, String> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    use std::net::ToSocketAddrs;
    full.to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not host:port or :port ({e})"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

impl WebSettings {
    /// The listen address parses; limits and timeouts are positive; the telemetry path is a path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_listen_address(&self.listen_address)
            .map_err(|e| ConfigError::new("web.listen_address", e))?;
        if self.max_connections == 0 {
            return bad("web.max_connections", "must be at least 1".into());
        }
        for (key, d) in [
            ("web.read_header_timeout", self.read_header_timeout),
            ("web.request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if !self.telemetry_path.starts_with('/') || self.telemetry_path.len() < 2 {
            return bad(
                "web.telemetry_path",
                format!("{:?} must start with / and not be /", self.telemetry_path),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":9868").unwrap().to_string(),
            "0.0.0.0:9868"
        );
        assert_eq!(
            parse_listen_address("127.0.0.1:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(parse_listen_address("9868").is_err());
    }
}
