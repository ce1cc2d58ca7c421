//! `--web.config.file`: the exporter-toolkit web configuration that every Prometheus exporter reads
//! (TLS with an optional client CA and TLS versions, bcrypt basic-auth users, response headers), so
//! SREs reuse the file they already have. A file is checked whole into a [`WebConfig`] or refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderName, HeaderValue};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// A web config file that cannot be used, with the reason (never a password hash).
#[derive(Debug, thiserror::Error)]
#[error("web config {path}: {reason}")]
pub struct WebConfigError {
    pub path: PathBuf,
    pub reason: String,
}

/// The file as written. Unknown keys are refused, as the toolkit does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    tls_server_config: Option<TlsSpec>,
    #[serde(default)]
    http_server_config: Option<HttpSpec>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    /// Accepted for compatibility: rustls always picks the suite by the server's order.
    #[serde(default)]
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    /// Accepted for compatibility; the exporter serves HTTP/1.1, which every Prometheus scrapes with.
    #[serde(default)]
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Response headers the toolkit lets a web config set.
const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// What the server applies: TLS (none means plain HTTP), users (none means no auth), headers.
#[derive(Default)]
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub users: Option<Users>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.as_ref().map(|u| u.hashes.len()))
            .field("headers", &self.headers)
            .finish()
    }
}

/// The file's bytes and those of every file it names: when this changes, the config is re-read
/// (a certificate renewed in place changes it too).
pub type Fingerprint = [u8; 32];

impl WebConfig {
    /// Reads and checks `path`; relative file names in it are taken from its directory.
    pub fn load(path: &Path) -> Result<(WebConfig, Fingerprint), WebConfigError> {
        let err = |reason: String| WebConfigError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir).map_err(err)
    }

    /// A web config from its text; file names in it are taken from `dir`.
    pub fn parse(text: &[u8], dir: &Path) -> Result<(WebConfig, Fingerprint), String> {
        let spec: FileSpec =
            serde_yaml_ng::from_slice(text).map_err(|e| format!("not a valid web config: {e}"))?;
        let mut print = Sha256::new();
        print.update(text);
        let config = build(spec, dir, &mut print)?;
        Ok((config, print.finalize().into()))
    }

    /// The fingerprint of `path` as [`WebConfig::load`] would compute it, without building anything;
    /// `None` when it cannot be read (the next load says why).
    pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
        let text = std::fs::read(path).ok()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut print = Sha256::new();
        print.update(&text);
        if let Ok(FileSpec {
            tls_server_config: Some(t),
            ..
        }) = serde_yaml_ng::from_slice::<FileSpec>(&text)
        {
            for f in [&t.cert_file, &t.key_file, &t.client_ca_file] {
                if !f.is_empty() {
                    print.update(std::fs::read(dir.join(f)).unwrap_or_default());
                }
            }
        }
        Some(print.finalize().into())
    }
}

fn build(spec: FileSpec, dir: &Path, print: &mut Sha256) -> Result<WebConfig, String> {
    let tls = match spec.tls_server_config {
        Some(t) => tls_config(&t, dir, print)?,
        None => None,
    };
    let users = match spec.basic_auth_users {
        Some(u) if !u.is_empty() => Some(Users::new(u)?),
        _ => None,
    };
    let mut headers = Vec::new();
    for (name, value) in spec.http_server_config.unwrap_or_default().headers {
        let Some(allowed) = ALLOWED_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(&name))
        else {
            return Err(format!(
                "http_server_config.headers: {name:?} cannot be set (allowed: {})",
                ALLOWED_HEADERS.join(", ")
            ));
        };
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("http_server_config.headers.{name}: not a valid header value"))?;
        let name = HeaderName::from_bytes(allowed.to_ascii_lowercase().as_bytes())
            .expect("the allowed names are valid header names");
        headers.push((name, value));
    }
    Ok(WebConfig {
        tls,
        users,
        headers,
    })
}

fn read_file(dir: &Path, key: &str, name: &str, print: &mut Sha256) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "tls_server_config.{key}: cannot read {}: {e}",
            path.display()
        )
    })?;
    print.update(&bytes);
    Ok(bytes)
}

fn tls_config(
    t: &TlsSpec,
    dir: &Path,
    print: &mut Sha256,
) -> Result<Option<Arc<ServerConfig>>, String> {
    // As in the toolkit: a TLS section with nothing in it serves plain HTTP.
    if t.cert_file.is_empty()
        && t.key_file.is_empty()
        && t.client_ca_file.is_empty()
        && t.client_auth_type.is_empty()
    {
        return Ok(None);
    }
    if t.cert_file.is_empty() {
        return Err(
            "tls_server_config.cert_file: missing (a key_file needs its certificate)".into(),
        );
    }
    if t.key_file.is_empty() {
        return Err("tls_server_config.key_file: missing (a cert_file needs its key)".into());
    }
    let cert_pem = read_file(dir, "cert_file", &t.cert_file, print)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.cert_file: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("tls_server_config.cert_file: holds no certificate".into());
    }
    let key_pem = read_file(dir, "key_file", &t.key_file, print)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls_server_config.key_file: no PEM private key: {e}"))?;

    let mut provider = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        provider.cipher_suites = cipher_suites(&provider, &t.cipher_suites)?;
    }
    if !t.curve_preferences.is_empty() {
        provider.kx_groups = curves(&provider, &t.curve_preferences)?;
    }
    let versions = versions(t.min_version.as_deref(), t.max_version.as_deref())?;
    let provider = Arc::new(provider);

    let verifier: Option<Arc<dyn ClientCertVerifier>> = match t.client_auth_type.as_str() {
        "" | "NoClientCert" => {
            if !t.client_ca_file.is_empty() {
                return Err("tls_server_config.client_ca_file: set without a client_auth_type that checks client certificates (RequireAndVerifyClientCert or VerifyClientCertIfGiven)".into());
            }
            None
        }
        kind @ ("RequestClientCert" | "RequireAnyClientCert") => Some(Arc::new(AnyClientCert {
            mandatory: kind == "RequireAnyClientCert",
            algorithms: provider.signature_verification_algorithms,
        })),
        kind @ ("VerifyClientCertIfGiven" | "RequireAndVerifyClientCert") => {
            if t.client_ca_file.is_empty() {
                return Err(format!(
                    "tls_server_config.client_ca_file: {kind} needs the CA that signs client certificates"
                ));
            }
            let ca_pem = read_file(dir, "client_ca_file", &t.client_ca_file, print)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert = cert
                    .map_err(|e| format!("tls_server_config.client_ca_file: not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_server_config.client_ca_file: holds no certificate".into());
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if kind == "VerifyClientCertIfGiven" {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            Some(
                builder
                    .build()
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: {other:?} is none of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ))
        }
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: the key does not fit the certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// TLS versions from the toolkit's names; rustls speaks 1.2 and 1.3 only, so an older minimum
/// means 1.2 and an older maximum cannot be met.
fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |key: &str, v: &str| match v {
        "TLS10" => Ok(10),
        "TLS11" => Ok(11),
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        other => Err(format!(
            "tls_server_config.{key}: {other:?} is none of TLS10, TLS11, TLS12, TLS13"
        )),
    };
    let min = min
        .map(|v| rank("min_version", v))
        .transpose()?
        .unwrap_or(12);
    let max = max
        .map(|v| rank("max_version", v))
        .transpose()?
        .unwrap_or(13);
    if max < 12 {
        return Err("tls_server_config.max_version: below TLS12, which is the oldest version this exporter serves".into());
    }
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let mut out = Vec::new();
    if min <= 12 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

/// TLS 1.2 suites in the order given, by Go's names; TLS 1.3 suites are always offered, as in Go.
fn cipher_suites(
    provider: &CryptoProvider,
    names: &[String],
) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let name_of = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    let mut out: Vec<_> = Vec::new();
    for name in names {
        // Go also accepts the ChaCha20 names without their hash.
        let wanted = if name.ends_with("CHACHA20_POLY1305") {
            format!("{name}_SHA256")
        } else {
            name.clone()
        };
        let Some(suite) = provider
            .cipher_suites
            .iter()
            .find(|s| s.tls13().is_none() && name_of(s) == wanted)
        else {
            let known: Vec<String> = provider
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_none())
                .map(name_of)
                .collect();
            return Err(format!(
                "tls_server_config.cipher_suites: {name:?} is not offered (supported: {})",
                known.join(", ")
            ));
        };
        out.push(*suite);
    }
    out.extend(
        provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some()),
    );
    Ok(out)
}

/// Key-exchange groups in the order given, by Go's names.
fn curves(
    provider: &CryptoProvider,
    names: &[String],
) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, String> {
    let mut out = Vec::new();
    for name in names {
        let group = match name.as_str() {
            "X25519" => rustls::NamedGroup::X25519,
            "CurveP256" => rustls::NamedGroup::secp256r1,
            "CurveP384" => rustls::NamedGroup::secp384r1,
            other => {
                return Err(format!(
                    "tls_server_config.curve_preferences: {other:?} is not offered (supported: X25519, CurveP256, CurveP384)"
                ))
            }
        };
        if let Some(g) = provider.kx_groups.iter().find(|g| g.name() == group) {
            out.push(*g);
        }
    }
    Ok(out)
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is asked for (and with the
/// second, required), its signature over the handshake is checked, and its issuer is not.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Basic-auth users and their bcrypt hashes. bcrypt is slow on purpose (tens of ms a check), so
/// results are cached under a digest of user, hash and password together: a cached answer is never
/// reused for another password or for the same password against a changed hash.
pub struct Users {
    hashes: BTreeMap<String, Secret>,
    /// Checked in place of an unknown user's hash, at the cost of the first user's, so that the
    /// time an answer takes does not tell which users exist. Its password is random and unkept.
    decoy: String,
    cache: Mutex<HashMap<[u8; 32], bool>>,
}

/// The highest bcrypt cost accepted: each step doubles the work, and 15 is already ~2 s a check
/// on one core of the bench machine.
const MAX_COST: u32 = 15;

/// At most this many cached answers; the cache is emptied when full (a flood of wrong passwords
/// must not grow memory).
const CACHE_LIMIT: usize = 1024;

impl Users {
    fn new(hashes: BTreeMap<String, Secret>) -> Result<Users, String> {
        let mut cost = bcrypt::DEFAULT_COST;
        for (i, (user, hash)) in hashes.iter().enumerate() {
            let parts = hash
                .expose()
                .parse::<bcrypt::HashParts>()
                .map_err(|_| format!("basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"))?;
            if parts.get_cost() > MAX_COST {
                return Err(format!(
                    "basic_auth_users.{user}: bcrypt cost {} is above {MAX_COST}; each check would take seconds of CPU (10-12 is usual)",
                    parts.get_cost()
                ));
            }
            if i == 0 {
                cost = parts.get_cost();
            }
        }
        let random: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(24)
            .collect();
        let decoy = bcrypt::hash(random, cost).map_err(|e| format!("basic_auth_users: {e}"))?;
        Ok(Users {
            hashes,
            decoy,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// True when `password` is `user`'s. Blocking (bcrypt): call it off the async threads.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.expose(), true),
            None => (self.decoy.as_str(), false),
        };
        let mut key = Sha256::new();
        for part in [user, hash, password] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        let key: [u8; 32] = key.finalize().into();
        if let Some(&ok) = crate::lock::lock(&self.cache).get(&key) {
            return ok && known;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        let mut cache = crate::lock::lock(&self.cache);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, yaml: &str) -> Result<WebConfig, String> {
        let p = dir.join("web.yml");
        std::fs::write(&p, yaml).unwrap();
        WebConfig::load(&p)
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn users_are_checked_against_their_own_hash_and_cached_per_password() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash_with_salt("s3cret", 4, [7; 16])
            .unwrap()
            .to_string();
        let c = load(
            dir.path(),
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        )
        .unwrap();
        let users = c.users.unwrap();
        assert!(users.check("alice", "s3cret"));
        assert!(users.check("alice", "s3cret"), "cached answer");
        assert!(!users.check("alice", "S3cret"));
        assert!(!users.check("bob", "s3cret"));
        assert_eq!(
            users.decoy.parse::<bcrypt::HashParts>().unwrap().get_cost(),
            4
        );
        assert_eq!(crate::lock::lock(&users.cache).len(), 3);
    }

    #[test]
    fn bad_files_are_refused_with_the_key_at_fault_and_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "basic_auth_users:\n  alice: not-a-hash\n",
                "basic_auth_users.alice: not a bcrypt hash",
            ),
            (
                "basic_auth_users:\n  bob: $2b$31$ATcjzbDYFYPIO574hna3Vu39Rk4cGwCHQPDR7MzwztdiMAJoDQUpG\n",
                "basic_auth_users.bob: bcrypt cost 31 is above 15",
            ),
            (
                "tls_server_config:\n  cert_file: c.pem\n",
                "tls_server_config.key_file: missing",
            ),
            (
                "tls_server_config:\n  key_file: k.pem\n",
                "tls_server_config.cert_file: missing",
            ),
            (
                "tls_server_config:\n  cert_file: nope.pem\n  key_file: k.pem\n",
                "tls_server_config.cert_file: cannot read",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "\"Server\" cannot be set",
            ),
            ("tls_srv_config: {}\n", "unknown field `tls_srv_config`"),
        ];
        for (yaml, want) in cases {
            let e = load(dir.path(), yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
            assert!(!e.contains("not-a-hash"), "{e}");
        }
        assert!(load(dir.path(), "").unwrap().tls.is_none());
        assert!(load(dir.path(), "tls_server_config: {}\n")
            .unwrap()
            .tls
            .is_none());
    }

    #[test]
    fn tls_versions_follow_the_toolkit_names() {
        let v =
            |min, max| versions(min, max).map(|v| v.iter().map(|p| p.version).collect::<Vec<_>>());
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v(None, None).unwrap(), [TLSv1_2, TLSv1_3]);
        assert_eq!(v(Some("TLS10"), None).unwrap(), [TLSv1_2, TLSv1_3]);
        assert_eq!(v(Some("TLS13"), None).unwrap(), [TLSv1_3]);
        assert_eq!(v(None, Some("TLS12")).unwrap(), [TLSv1_2]);
        assert!(v(None, Some("TLS11")).unwrap_err().contains("below TLS12"));
        assert!(v(Some("TLS13"), Some("TLS12"))
            .unwrap_err()
            .contains("above"));
        assert!(v(Some("SSL3"), None).unwrap_err().contains("none of TLS10"));
    }
}
