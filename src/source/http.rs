//! What every outgoing HTTP client shares: TLS from PEM files (a CA bundle, a client certificate),
//! and reading a reqwest error (is it TLS? what is its whole cause chain?).

use std::path::Path;

/// Adds a CA bundle and a client identity (certificate and key in one PEM file) to a client.
/// The error names the file and what is wrong with it.
pub fn with_tls_files(
    mut b: reqwest::ClientBuilder,
    ca: Option<&Path>,
    identity: Option<&Path>,
) -> Result<reqwest::ClientBuilder, String> {
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "CA bundle {} is not PEM: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
        if certs.is_empty() {
            return Err(format!("CA bundle {} holds no certificate", path.display()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(path) = identity {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read client certificate {}: {e}", path.display()))?;
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "client certificate {} must hold the certificate and its private key in PEM: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
        b = b.identity(id);
    }
    Ok(b)
}

/// Builds the client; reqwest says only "builder error", so the cause and the TLS files are named.
pub fn build(
    b: reqwest::ClientBuilder,
    files: &[Option<&Path>],
) -> Result<reqwest::Client, String> {
    b.build().map_err(|e| {
        let files: Vec<String> = files
            .iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        format!("{} (TLS files: {})", error_chain(&e), files.join(", "))
    })
}

/// Whether rustls is somewhere in the cause chain: a certificate or handshake problem, which no retry
/// mends. rustls errors travel inside `std::io::Error`, whose `source()` skips its payload.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_tls_error(inner) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The whole cause chain of an error (reqwest's top-level message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
