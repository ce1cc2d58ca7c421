//! TLS tests of the MLflow client against a small HTTPS server on 127.0.0.1 with rcgen certificates:
//! a custom CA bundle, untrusted and insecure modes, mutual TLS, and unusable certificate files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::tls::{Ca, Leaf};
use mlflow_exporter::config::Settings;
use mlflow_exporter::error::MlflowError;
use mlflow_exporter::source::mlflow::MlflowClient;
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

const BODY: &str =
    r#"{"experiments":[{"experiment_id":"1","name":"tls-ok","lifecycle_stage":"active"}]}"#;
const REQUEST_LINE: &str = "POST /api/2.0/mlflow/experiments/search HTTP/1.1";
/// Largest request the test server reads; MLflow's experiments search body is far smaller.
const MAX_REQUEST: usize = 64 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Every certificate the tests use, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server: Leaf,
    server_ca: Ca,
    client_ca: Ca,
    client: Leaf,
    wrong_client: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let server_ca = Ca::new("mlflow-exporter test server CA");
        let server = server_ca.leaf(
            "mlflow test server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client_ca = Ca::new("mlflow-exporter test client CA");
        let client = client_ca.leaf("exporter", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let wrong_ca = Ca::new("unrelated CA");
        let wrong_client = wrong_ca.leaf("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            server,
            server_ca,
            client_ca,
            client,
            wrong_client,
        };
        pki.write("ca.pem", &pki.server_ca.pem());
        pki.write("client.pem", &pki.client.identity_pem());
        pki.write("wrong-client.pem", &pki.wrong_client.identity_pem());
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Server configuration presenting the server certificate; with `mtls`, client certificates
    /// signed by the client CA are required.
    fn server_config(&self, mtls: bool) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = RootCertStore::empty();
            roots.add(self.client_ca.der()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(
                vec![self.server.der(), self.server_ca.der()],
                self.server.key_der(),
            )
            .unwrap()
    }
}

/// What the test server saw: request lines it answered and connections it gave up on.
#[derive(Default)]
struct Log {
    served: Vec<String>,
    failed: Vec<String>,
}

/// A minimal HTTPS MLflow answering every request with one experiment. Dropping it aborts the accept
/// loop, whose `JoinSet` aborts every connection task with it.
struct TlsServer {
    url: String,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl TlsServer {
    async fn start(config: ServerConfig) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let log = Arc::new(Mutex::new(Log::default()));
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        connections.spawn(serve(acceptor.clone(), tcp, task_log.clone()));
                    }
                    // Reap finished connections so the set does not grow; a panic is logged as a failure.
                    Some(done) = connections.join_next(), if !connections.is_empty() => {
                        if let Err(e) = done {
                            task_log.lock().unwrap().failed.push(format!("connection task: {e}"));
                        }
                    }
                }
            }
        });
        TlsServer { url, log, task }
    }

    /// The log once it holds at least `connections` entries (or after 2 s): a connection is logged
    /// only when its task ends, which may be just after the client has its answer.
    async fn log(&self, connections: usize) -> (Vec<String>, Vec<String>) {
        for _ in 0..200 {
            {
                let log = self.log.lock().unwrap();
                if log.served.len() + log.failed.len() >= connections {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = self.log.lock().unwrap();
        (log.served.clone(), log.failed.clone())
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: handshake, one request, one response. Every failure is logged, never panics.
async fn serve(acceptor: TlsAcceptor, tcp: TcpStream, log: Arc<Mutex<Log>>) {
    let outcome = async {
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request_line = read_request(&mut tls).await?;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        tls.write_all(response.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // The client may already have gone once it has the body; that is no failure.
        let _ = tls.shutdown().await;
        Ok::<_, String>(request_line)
    };
    let result = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    let mut log = log.lock().unwrap();
    match result {
        Ok(line) => log.served.push(line),
        Err(e) => log.failed.push(e),
    }
}

/// Reads the headers and a `Content-Length` body; returns the request line.
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Err("request headers too large".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the end of the headers".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .map_err(|e| format!("bad Content-Length: {e}"))?
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return Err("request body too large".into());
    }
    while buf.len() < header_end + length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the end of the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(head.lines().next().unwrap_or_default().to_string())
}

/// Settings for `url` that fail fast: no retries, a short timeout.
fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.mlflow.tracking_uri = url.to_string();
    s.mlflow.max_retries = 0;
    s.mlflow.retry_backoff = Duration::from_millis(10);
    s.mlflow.timeout = Duration::from_secs(5);
    s
}

/// Runs the experiments search and returns the names of what came back.
async fn experiment_names(s: &Settings) -> Result<Vec<String>, MlflowError> {
    let client = MlflowClient::new(&s.mlflow, None)?;
    let (experiments, requests) = client.experiments().await?;
    assert_eq!(requests, 1);
    Ok(experiments.into_iter().map(|e| e.name).collect())
}

/// The `Tls` error of a failed search, whose text is returned; any other outcome fails the test.
async fn tls_error(s: &Settings) -> String {
    match experiment_names(s).await {
        Err(e @ MlflowError::Tls { .. }) => {
            assert_eq!(e.reason(), "tls");
            e.to_string()
        }
        other => panic!("expected MlflowError::Tls, got {other:?}"),
    }
}

/// The `Setup` message of a client that cannot be built; any other outcome fails the test.
fn setup_error(s: &Settings) -> String {
    match MlflowClient::new(&s.mlflow, None) {
        Err(MlflowError::Setup(msg)) => msg,
        Err(e) => panic!("expected MlflowError::Setup, got {e:?}"),
        Ok(_) => panic!("expected MlflowError::Setup, but the client was built"),
    }
}

#[tokio::test]
async fn a_server_signed_by_the_configured_ca_is_trusted() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.server_config(false)).await;
    let mut s = settings(&server.url);
    s.mlflow.server_cert_path = Some(pki.path("ca.pem"));
    let names = experiment_names(&s).await.expect("search over TLS");
    assert_eq!(names, vec!["tls-ok".to_string()]);
    let (served, failed) = server.log(1).await;
    assert_eq!(served, vec![REQUEST_LINE.to_string()]);
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.server_config(false)).await;
    // Retries are allowed, yet a certificate problem is not retried: one handshake only.
    let mut s = settings(&server.url);
    s.mlflow.max_retries = 3;
    let text = tls_error(&s).await;
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("MLFLOW_TRACKING_SERVER_CERT_PATH"), "{text}");
    let (served, failed) = server.log(1).await;
    assert!(served.is_empty(), "{served:?}");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("handshake:"), "{failed:?}");
}

#[tokio::test]
async fn insecure_tls_accepts_an_untrusted_server() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.server_config(false)).await;
    let mut s = settings(&server.url);
    s.mlflow.insecure_tls = true;
    let names = experiment_names(&s).await.expect("insecure search");
    assert_eq!(names, vec!["tls-ok".to_string()]);
    let (served, failed) = server.log(1).await;
    assert_eq!(served, vec![REQUEST_LINE.to_string()]);
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = TlsServer::start(pki.server_config(true)).await;
    let mut s = settings(&server.url);
    s.mlflow.server_cert_path = Some(pki.path("ca.pem"));

    // The right client certificate.
    s.mlflow.client_cert_path = Some(pki.path("client.pem"));
    let names = experiment_names(&s).await.expect("search with mTLS");
    assert_eq!(names, vec!["tls-ok".to_string()]);
    let (served, failed) = server.log(1).await;
    assert_eq!(served, vec![REQUEST_LINE.to_string()]);
    assert!(failed.is_empty(), "{failed:?}");

    // No client certificate.
    s.mlflow.client_cert_path = None;
    let text = tls_error(&s).await;
    assert!(text.contains("CertificateRequired"), "{text}");

    // A client certificate from a CA the server does not trust.
    s.mlflow.client_cert_path = Some(pki.path("wrong-client.pem"));
    let text = tls_error(&s).await;
    assert!(text.contains("UnknownCA"), "{text}");

    // Both refusals happened in the server's handshake, and nothing more was served.
    let (served, failed) = server.log(3).await;
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed.iter().all(|f| f.starts_with("handshake:")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn unusable_certificate_files_are_setup_errors_naming_the_file() {
    let pki = Pki::new();
    let mut s = settings("https://127.0.0.1:1");

    let missing = pki.path("missing-ca.pem");
    s.mlflow.server_cert_path = Some(missing.clone());
    let msg = setup_error(&s);
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read CA bundle"), "{msg}");

    let not_pem = pki.write("not-a-cert.pem", "this is not a certificate\n");
    s.mlflow.server_cert_path = Some(not_pem.clone());
    let msg = setup_error(&s);
    assert!(msg.contains(&not_pem.display().to_string()), "{msg}");
    assert!(msg.contains("holds no certificate"), "{msg}");

    // PEM, but only a private key.
    let key_only = pki.write("key-only.pem", &pki.client.key.serialize_pem());
    s.mlflow.server_cert_path = Some(key_only.clone());
    let msg = setup_error(&s);
    assert!(msg.contains(&key_only.display().to_string()), "{msg}");
    assert!(msg.contains("holds no certificate"), "{msg}");

    s.mlflow.server_cert_path = Some(pki.path("ca.pem"));
    let cert_only = pki.write("client-cert-only.pem", &pki.client.cert.pem());
    s.mlflow.client_cert_path = Some(cert_only.clone());
    let msg = setup_error(&s);
    assert!(msg.contains(&cert_only.display().to_string()), "{msg}");
    assert!(msg.contains("private key"), "{msg}");

    let missing = pki.path("missing-client.pem");
    s.mlflow.client_cert_path = Some(missing.clone());
    let msg = setup_error(&s);
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read client certificate"), "{msg}");
}

#[test]
fn certificates_rustls_rejects_are_setup_errors_naming_the_file() {
    let pki = Pki::new();
    let mut s = settings("https://127.0.0.1:1");

    // A well-formed PEM block whose contents are not a certificate.
    let bad_der = pki.write(
        "bad-der.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    s.mlflow.server_cert_path = Some(bad_der.clone());
    let msg = setup_error(&s);
    assert!(
        msg.contains(&bad_der.display().to_string()),
        "the message does not name the CA bundle: {msg}"
    );

    // The client certificate with the private key of another certificate.
    s.mlflow.server_cert_path = Some(pki.path("ca.pem"));
    let mismatched = pki.write(
        "mismatched.pem",
        &format!(
            "{}{}",
            pki.client.cert.pem(),
            pki.wrong_client.key.serialize_pem()
        ),
    );
    s.mlflow.client_cert_path = Some(mismatched.clone());
    let msg = setup_error(&s);
    assert!(
        msg.contains(&mismatched.display().to_string()),
        "the message does not name the client certificate: {msg}"
    );
}
