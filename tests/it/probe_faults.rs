//! Faults of the HTTP probes, one at a time, against wiremock and a small rustls server with rcgen
//! certificates: each fault must give exactly its `reason` and status, a good answer none; what is
//! configured (method, headers from the environment and files, JSON body) must be exactly what is
//! sent; and the exporter must never show a probe header's secret in its log, its metrics or
//! `check-config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::exporter::{run_exporter, ExporterProcess};
use crate::support::http::{free_port, http_get};
use crate::support::scrape::Scrape;
use crate::support::{now_ms, write_file};
use mlflow_exporter::config::probes::{HeaderSource, Probe, ProbeSettings};
use mlflow_exporter::config::Secret;
use mlflow_exporter::source::probe::{Outcome, Prober, Reason};
use rcgen::{
    date_time_ymd, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

// ---------------------------------------------------------------------------------------------
// The prober in-process.

/// The prober of one target, built as the exporter builds it: defaults applied and checked first.
fn prober(target: Probe) -> Prober {
    let settings = ProbeSettings {
        targets: vec![target],
        ..Default::default()
    };
    let specs = settings.specs().expect("the probe is valid");
    assert_eq!(specs.len(), 1);
    Prober::new(&specs[0]).expect("the prober builds")
}

/// One probe of `target`, checking the fields every outcome must have right.
async fn probe(target: Probe) -> Outcome {
    let before = now_ms();
    let o = prober(target).probe().await;
    let after = now_ms();
    assert!(
        (before..=after).contains(&o.at_ms),
        "at_ms {} not within [{before}, {after}]",
        o.at_ms
    );
    assert!(o.seconds >= 0.0 && o.seconds.is_finite(), "{o:?}");
    assert_eq!(o.failure.is_none(), o.detail.is_empty(), "{o:?}");
    o
}

/// The probe failed for exactly `reason`, with exactly `status` (`None`: no answer came).
fn assert_failed(o: &Outcome, reason: Reason, status: Option<u16>) {
    assert_eq!(
        (o.failure, o.status),
        (Some(reason), status),
        "failure and status of {o:?}"
    );
}

/// The probe succeeded with exactly `status`.
fn assert_ok(o: &Outcome, status: u16) {
    assert_eq!(
        (o.failure, o.status),
        (None, Some(status)),
        "failure and status of {o:?}"
    );
    assert_eq!(o.detail, "");
}

fn get(name: &str, url: String) -> Probe {
    Probe::get(name, &url)
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_a_timeout_without_status() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let mut target = get("slow", format!("{}/slow", server.uri()));
    target.timeout = Some(Duration::from_millis(300));
    let o = probe(target).await;
    assert_failed(&o, Reason::Timeout, None);
    assert_eq!(o.cert_not_after, None);
    // It took the whole timeout, and ended at the timeout rather than when the answer came.
    assert!(o.seconds >= 0.3, "{o:?}");
    assert!(o.seconds < 2.5, "{o:?}");
    assert!(o.detail.contains("timed out"), "{o:?}");
    // The request did reach the server: the timeout is not a connection failure.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_a_connect_failure() {
    let url = format!("http://127.0.0.1:{}/health", free_port());
    let o = probe(get("refused", url.clone())).await;
    assert_failed(&o, Reason::Connect, None);
    assert_eq!(o.cert_not_after, None);
    assert!(o.seconds < 2.0, "a refusal is immediate: {o:?}");
    assert!(o.detail.contains("Connection refused"), "{o:?}");
    // The detail goes to the log: it leaves the URL out.
    assert!(!o.detail.contains(&url), "{o:?}");
}

#[tokio::test]
async fn an_unexpected_status_is_a_status_failure_with_that_status() {
    let server = MockServer::start().await;
    for (p, code) in [("/down", 503), ("/created", 201), ("/empty", 204)] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(code).set_body_string("server says hello"))
            .mount(&server)
            .await;
    }
    let url = |p: &str| format!("{}{p}", server.uri());

    // Any 2xx is fine by default; a 503 is not.
    let o = probe(get("down", url("/down"))).await;
    assert_failed(&o, Reason::Status, Some(503));
    assert_eq!(o.detail, "unexpected status 503");
    assert_eq!(o.cert_not_after, None);
    assert_ok(&probe(get("created", url("/created"))).await, 201);
    assert_ok(&probe(get("empty", url("/empty"))).await, 204);

    // The same 503 succeeds when it is the expected status.
    let mut expect_503 = get("down", url("/down"));
    expect_503.expect.status = vec![503];
    assert_ok(&probe(expect_503.clone()).await, 503);
    // ... and the body is still checked after the status.
    expect_503.expect.body_contains = Some("hello".into());
    assert_ok(&probe(expect_503).await, 503);

    // An explicit list replaces "any 2xx".
    let mut only_200 = get("created", url("/created"));
    only_200.expect.status = vec![200];
    let o = probe(only_200).await;
    assert_failed(&o, Reason::Status, Some(201));
    assert_eq!(o.detail, "unexpected status 201");

    // A wrong status wins over a wrong body: the reason is the status.
    let mut both_wrong = get("down", url("/down"));
    both_wrong.expect.body_contains = Some("not in the answer".into());
    assert_failed(&probe(both_wrong).await, Reason::Status, Some(503));
}

#[tokio::test]
async fn an_unexpected_body_is_a_body_failure() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/predict"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"predictions": [0.25, 0.75]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/text"))
        .respond_with(ResponseTemplate::new(200).set_body_string("predictions: none, plain text"))
        .mount(&server)
        .await;
    let with = |p: &str, contains: Option<&str>, json_path: Option<&str>| {
        let mut t = get("model", format!("{}{p}", server.uri()));
        t.expect.body_contains = contains.map(String::from);
        t.expect.json_path = json_path.map(String::from);
        t
    };

    // body_contains.
    let o = probe(with("/predict", Some("outputs"), None)).await;
    assert_failed(&o, Reason::Body, Some(200));
    assert_eq!(o.detail, r#"the answer does not contain "outputs""#);
    assert_ok(
        &probe(with("/predict", Some("predictions"), None)).await,
        200,
    );

    // A JSONPath that selects nothing: a missing key, an index past the end.
    let o = probe(with("/predict", None, Some("$.outputs[0]"))).await;
    assert_failed(&o, Reason::Body, Some(200));
    assert!(o.detail.contains("selects nothing"), "{o:?}");
    assert_failed(
        &probe(with("/predict", None, Some("$.predictions[2]"))).await,
        Reason::Body,
        Some(200),
    );

    // An answer that is not JSON, though it holds the text the path names.
    let o = probe(with("/text", None, Some("$.predictions"))).await;
    assert_failed(&o, Reason::Body, Some(200));
    assert!(o.detail.starts_with("the answer is not JSON"), "{o:?}");
    // ... is fine without a JSONPath.
    assert_ok(&probe(with("/text", Some("plain text"), None)).await, 200);

    // A JSONPath that selects something, with and without body_contains.
    assert_ok(
        &probe(with("/predict", None, Some("$.predictions[1]"))).await,
        200,
    );
    assert_ok(
        &probe(with("/predict", Some("0.75"), Some("$.predictions[0]"))).await,
        200,
    );
    // Both expectations are checked: the right path does not excuse a missing string.
    assert_failed(
        &probe(with("/predict", Some("outputs"), Some("$.predictions[0]"))).await,
        Reason::Body,
        Some(200),
    );
}

#[tokio::test]
async fn method_headers_and_body_reach_the_server_as_configured() {
    // A variable only this test sets.
    const VAR: &str = "MLFLOW_EXPORTER_PROBE_FAULTS_TEST_TOKEN";
    std::env::set_var(VAR, "Bearer env-token-3f9a");
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(dir.path(), "api-key", "file-key-71c2\n");

    let server = MockServer::start().await;
    let body = json!({"inputs": [[1.0, 2.0]], "params": {"note": "ü"}});
    Mock::given(method("POST"))
        .and(path("/invocations"))
        .and(header("content-type", "application/json"))
        .and(header("authorization", "Bearer env-token-3f9a"))
        .and(header("x-api-key", "file-key-71c2"))
        .and(header("x-team", "literal-team"))
        .and(body_json(&body))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"predictions": [1]})))
        .expect(1)
        .mount(&server)
        .await;
    let mut target = get("model", format!("{}/invocations", server.uri()));
    target.body = Some(body.clone());
    target.headers = BTreeMap::from([
        (
            "Authorization".into(),
            HeaderSource::Env { env: VAR.into() },
        ),
        (
            "X-Api-Key".into(),
            HeaderSource::File {
                file: key_file.clone(),
            },
        ),
        (
            "X-Team".into(),
            HeaderSource::Value(Secret::new("literal-team")),
        ),
    ]);
    target.expect.json_path = Some("$.predictions[0]".into());
    // No method: a body makes it a POST.
    assert_ok(&probe(target.clone()).await, 200);
    server.verify().await;

    // Byte for byte: one value per header, the file's newline dropped, the body as serde writes it.
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method.as_str(), "POST");
    let values = |name: &str| -> Vec<&[u8]> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    };
    assert_eq!(values("content-type"), [b"application/json".as_slice()]);
    assert_eq!(
        values("authorization"),
        [b"Bearer env-token-3f9a".as_slice()]
    );
    assert_eq!(values("x-api-key"), [b"file-key-71c2".as_slice()]);
    assert_eq!(values("x-team"), [b"literal-team".as_slice()]);
    assert_eq!(r.body, serde_json::to_vec(&body).unwrap());

    // An explicit method (any case) and an explicit Content-Type, which is kept as configured.
    Mock::given(method("PUT"))
        .and(path("/invocations"))
        .and(header("content-type", "application/x-custom+json"))
        .and(body_json(&body))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let mut put = target.clone();
    put.method = Some("put".into());
    put.expect.json_path = None;
    put.headers.insert(
        "Content-Type".into(),
        HeaderSource::Value(Secret::new("application/x-custom+json")),
    );
    assert_ok(&probe(put).await, 200);
    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1]
            .headers
            .get_all("content-type")
            .iter()
            .collect::<Vec<_>>(),
        ["application/x-custom+json"]
    );

    // Without a body: a GET with no Content-Type and an empty body.
    Mock::given(method("GET"))
        .and(path("/ping"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let mut ping = target.clone();
    ping.url = format!("{}/ping", server.uri());
    ping.body = None;
    ping.expect.json_path = None;
    assert_ok(&probe(ping).await, 200);
    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].method.as_str(), "GET");
    assert!(!requests[2].headers.contains_key("content-type"));
    assert!(requests[2].body.is_empty());
    assert_eq!(requests[2].headers["x-api-key"], "file-key-71c2");
}

// ---------------------------------------------------------------------------------------------
// TLS: a small HTTPS server on 127.0.0.1 presenting rcgen certificates.

/// A certificate's `notAfter` to second precision, given to rcgen and expected back from the probe.
#[derive(Clone, Copy)]
struct NotAfter {
    ymd: (i32, u8, u8),
    hms: (u32, u32, u32),
}

impl NotAfter {
    fn set(self, params: &mut CertificateParams) {
        let (y, m, d) = self.ymd;
        let (h, mi, s) = self.hms;
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after =
            date_time_ymd(y, m, d) + Duration::from_secs(u64::from(h * 3600 + mi * 60 + s));
    }

    /// Unix seconds, computed apart from rcgen.
    fn unix(self) -> i64 {
        let (y, m, d) = self.ymd;
        let (h, mi, s) = self.hms;
        chrono::NaiveDate::from_ymd_opt(y, m.into(), d.into())
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
            .and_utc()
            .timestamp()
    }
}

/// Long expired.
const EXPIRED: NotAfter = NotAfter {
    ymd: (2021, 6, 15),
    hms: (1, 2, 3),
};
/// Valid for years (UTCTime in the certificate).
const VALID: NotAfter = NotAfter {
    ymd: (2041, 3, 4),
    hms: (12, 34, 56),
};
/// Valid past 2049 (GeneralizedTime in the certificate).
const FAR: NotAfter = NotAfter {
    ymd: (2061, 7, 8),
    hms: (9, 10, 11),
};

/// A CA made with rcgen, which signs the server certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        Ca {
            issuer: support::tls::ca(name),
        }
    }

    /// Writes the CA certificate as PEM (a `tls.ca_file`).
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write_file(dir, name, &self.issuer.pem())
    }

    /// A server certificate for 127.0.0.1 and its chain (leaf, CA).
    fn server_cert(&self, not_after: NotAfter) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let cert = server_params(not_after)
            .signed_by(&key, &self.issuer)
            .unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            key,
        }
    }
}

fn server_params(not_after: NotAfter) -> CertificateParams {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "probed model server");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    not_after.set(&mut params);
    params
}

/// A self-signed server certificate for 127.0.0.1, which no CA vouches for.
fn self_signed(not_after: NotAfter) -> ServerCert {
    let key = KeyPair::generate().unwrap();
    let cert = server_params(not_after).self_signed(&key).unwrap();
    ServerCert {
        chain: vec![cert.der().clone()],
        key,
    }
}

struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

const TLS_BODY: &str = r#"{"status":"ok"}"#;

/// An HTTPS server answering every request with 200 and [`TLS_BODY`]; counts the requests it served
/// and the handshakes that failed. Dropping it aborts the accept loop and every connection.
struct TlsServer {
    url: String,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsServer {
    async fn start(cert: &ServerCert) -> TlsServer {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.serialize_der()));
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/health", listener.local_addr().unwrap());
        let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, f) = (Arc::clone(&served), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        connections.spawn(serve(acceptor.clone(), tcp, s.clone(), f.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        TlsServer {
            url,
            served,
            failed,
            task,
        }
    }

    /// (served, failed) once `connections` connections have ended (or after 2 s).
    async fn counts(&self, connections: usize) -> (usize, usize) {
        let read = || {
            (
                self.served.load(Ordering::SeqCst),
                self.failed.load(Ordering::SeqCst),
            )
        };
        for _ in 0..200 {
            let (s, f) = read();
            if s + f >= connections {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        read()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: handshake, one request (headers only: probes here are GETs), one answer.
async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) {
    let answer = async {
        let mut tls = acceptor.accept(tcp).await.map_err(|_| ())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut chunk).await.map_err(|_| ())?;
            if n == 0 || buf.len() > 64 * 1024 {
                return Err(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TLS_BODY}",
            TLS_BODY.len()
        );
        tls.write_all(response.as_bytes()).await.map_err(|_| ())?;
        let _ = tls.shutdown().await;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(())) => served.fetch_add(1, Ordering::SeqCst),
        _ => failed.fetch_add(1, Ordering::SeqCst),
    };
}

/// A probe of `server` with a short timeout, expecting the server's body.
fn tls_target(server: &TlsServer, ca_file: Option<PathBuf>, insecure: bool) -> Probe {
    let mut t = get("tls", server.url.clone());
    t.timeout = Some(Duration::from_secs(3));
    t.expect.json_path = Some("$.status".into());
    t.tls.ca_file = ca_file;
    t.tls.insecure_skip_verify = insecure;
    t
}

#[tokio::test]
async fn an_expired_certificate_from_a_trusted_ca_is_a_tls_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("probe test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let server = TlsServer::start(&ca.server_cert(EXPIRED)).await;

    let o = probe(tls_target(&server, Some(ca_file.clone()), false)).await;
    assert_failed(&o, Reason::Tls, None);
    assert_eq!(o.cert_not_after, None, "no answer, so no certificate read");
    assert!(o.detail.contains("invalid peer certificate"), "{o:?}");
    assert!(o.detail.contains("xpired"), "{o:?}");
    assert_eq!(server.counts(1).await, (0, 1), "one refused handshake");

    // Accepting any certificate gets the answer, and reports the expiry in the past.
    let o = probe(tls_target(&server, Some(ca_file), true)).await;
    assert_ok(&o, 200);
    assert_eq!(o.cert_not_after, Some(EXPIRED.unix()));
    assert_eq!(server.counts(2).await, (1, 1));
}

#[tokio::test]
async fn a_self_signed_certificate_is_a_tls_failure_unless_verification_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(&self_signed(FAR)).await;

    // Neither the built-in roots nor an unrelated CA vouch for it.
    let o = probe(tls_target(&server, None, false)).await;
    assert_failed(&o, Reason::Tls, None);
    assert_eq!(o.cert_not_after, None);
    assert!(o.detail.contains("invalid peer certificate"), "{o:?}");
    let unrelated = Ca::new("unrelated CA").write(dir.path(), "unrelated.pem");
    let o = probe(tls_target(&server, Some(unrelated), false)).await;
    assert_failed(&o, Reason::Tls, None);
    assert_eq!(server.counts(2).await, (0, 2));

    let o = probe(tls_target(&server, None, true)).await;
    assert_ok(&o, 200);
    assert_eq!(o.cert_not_after, Some(FAR.unix()));
    assert_eq!(server.counts(3).await, (1, 2));
}

#[tokio::test]
async fn a_valid_certificate_from_the_configured_ca_succeeds_and_reports_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("probe test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let server = TlsServer::start(&ca.server_cert(VALID)).await;

    let o = probe(tls_target(&server, Some(ca_file), false)).await;
    assert_ok(&o, 200);
    assert_eq!(o.cert_not_after, Some(VALID.unix()));
    assert_eq!(server.counts(1).await, (1, 0));

    // The same server without its CA: the built-in roots do not know it.
    let o = probe(tls_target(&server, None, false)).await;
    assert_failed(&o, Reason::Tls, None);
    assert_eq!(server.counts(2).await, (1, 1));

    // Plain HTTP says nothing of certificates.
    let plain = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&plain)
        .await;
    let o = probe(get("plain", plain.uri())).await;
    assert_ok(&o, 200);
    assert_eq!(o.cert_not_after, None);
}

#[test]
fn the_not_after_values_are_what_the_tests_mean() {
    // 2021-06-15T01:02:03Z, 2041-03-04T12:34:56Z, 2061-07-08T09:10:11Z.
    assert_eq!(EXPIRED.unix(), 1_623_718_923);
    assert_eq!(VALID.unix(), 2_246_013_296);
    assert_eq!(FAR.unix(), 2_888_039_411);
}

// ---------------------------------------------------------------------------------------------
// The exporter binary: secrets in probe headers never show, and bad probes are refused.

const LITERAL_SECRET: &str = "lit-5ecret-a81d0c";
const ENV_SECRET: &str = "env-5ecret-27be94";
const FILE_SECRET: &str = "file-5ecret-c3f615";
const SECRET_VAR: &str = "PROBE_TEST_ENV_SECRET";

/// The three header secrets, literal, from the environment and from a file.
fn secret_headers(file: &Path) -> String {
    format!(
        "      headers:\n        Authorization: \"Bearer {LITERAL_SECRET}\"\n        X-Env-Token: {{env: {SECRET_VAR}}}\n        X-File-Token: {{file: {}}}\n",
        file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_header_secrets_never_show_in_the_log_the_metrics_or_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", &format!("{FILE_SECRET}\n"));
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/invocations"))
        .and(header(
            "authorization",
            format!("Bearer {LITERAL_SECRET}").as_str(),
        ))
        .and(header("x-env-token", ENV_SECRET))
        .and(header("x-file-token", FILE_SECRET))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"predictions": [0.5]})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/broken"))
        .respond_with(ResponseTemplate::new(503).set_body_string("overloaded"))
        .mount(&server)
        .await;
    let refused = format!("http://127.0.0.1:{}", free_port());
    let headers = secret_headers(&token_file);
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "mlflow:\n  tracking_uri: {refused}\n  max_retries: 0\n\
             probes:\n  mlflow_health: false\n  interval: 500ms\n  timeout: 500ms\n  targets:\n\
             \x20   - name: served\n      url: {uri}/invocations\n      model: fraud\n      alias: champion\n      body: {{inputs: [[1.0, 2.0]]}}\n      expect: {{json_path: '$.predictions[0]'}}\n{headers}\
             \x20   - name: broken\n      url: {uri}/broken\n{headers}\
             \x20   - name: refused\n      url: {refused}/invocations\n{headers}",
            uri = server.uri(),
        ),
    );
    let config_arg = config.to_str().unwrap();
    let env = [(SECRET_VAR, ENV_SECRET)];

    // check-config prints the probes, header sources and all, with no secret value.
    let (code, out, err) = run_exporter(&["--config.file", config_arg, "check-config"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("name: served"), "{out}");
    assert!(out.contains(&format!("env: {SECRET_VAR}")), "{out}");
    assert!(
        out.contains(&format!("file: {}", token_file.display())),
        "{out}"
    );
    // The literal header of each of the three probes, and nothing else.
    assert_eq!(out.matches("<redacted>").count(), 3, "{out}");

    let mut exporter = ExporterProcess::start(
        dir.path(),
        &["--config.file", config_arg, "--log.level", "debug"],
        &env,
    );
    // Several probe cycles of each target: answered, failed on status, refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        if let Ok(Some(status)) = exporter.child.try_wait() {
            panic!("exporter exited with {status}: {}", exporter.stderr());
        }
        let answered = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/invocations")
            .count();
        if let Ok(r) = http_get(&exporter.addr, "/metrics", &[]) {
            let s = Scrape::parse(&r.text());
            let failures = |probe: &str, reason: &str| {
                s.family("mlflow_probe_failures_total")
                    .iter()
                    .find(|(l, _)| l["probe"] == probe && l["reason"] == reason)
                    .map(|(_, v)| *v)
                    .unwrap_or(0.0)
            };
            if answered >= 3
                && failures("broken", "status") >= 3.0
                && failures("refused", "connect") >= 3.0
            {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no three probe cycles in 15 s: {}",
            exporter.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The secrets were sent, each exactly as configured...
    let requests = server.received_requests().await.unwrap();
    let probes: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == "/invocations")
        .collect();
    for r in &probes {
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {LITERAL_SECRET}").as_str()
        );
        assert_eq!(r.headers["x-env-token"], ENV_SECRET);
        assert_eq!(r.headers["x-file-token"], FILE_SECRET);
    }
    // ... the probes did what their faults make them do ...
    let labels = [
        ("probe", "served"),
        ("model", "fraud"),
        ("alias", "champion"),
    ];
    assert_eq!(scrape.get("mlflow_probe_success", &labels), 1.0);
    assert_eq!(
        scrape.get(
            "mlflow_probe_success",
            &[("probe", "refused"), ("model", ""), ("alias", "")]
        ),
        0.0
    );
    assert_eq!(
        scrape.get("mlflow_probe_http_status_code", &[("probe", "broken")]),
        503.0
    );
    assert_eq!(
        scrape.get("mlflow_probe_http_status_code", &[("probe", "refused")]),
        0.0
    );
    // ... and the log is at debug level, with the failures in it.
    let log = exporter.stderr();
    assert!(log.contains("probe failed"), "{log}");
    assert!(log.contains("reason=connect"), "{log}");
    assert!(log.contains("reason=status"), "{log}");

    let metrics = exporter.get("/metrics").text();
    for secret in [LITERAL_SECRET, ENV_SECRET, FILE_SECRET] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        assert!(!out.contains(secret), "{secret} in check-config: {out}");
        assert!(!err.contains(secret), "{secret} in check-config's stderr");
    }
}

#[test]
fn a_probe_url_with_credentials_is_refused_naming_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "mlflow:\n  tracking_uri: http://127.0.0.1:1\n\
         probes:\n  targets:\n    - name: ok\n      url: http://127.0.0.1:1/ping\n\
         \x20   - name: with-password\n      url: http://user:pw-5ecret-90ab@127.0.0.1:1/\n",
    );
    let config = config.to_str().unwrap();
    for args in [
        vec!["--config.file", config, "check-config"],
        vec!["--config.file", config],
    ] {
        let (code, out, err) = run_exporter(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(
            err.contains("probes.targets[1] (with-password): url holds credentials"),
            "{err}"
        );
        assert!(!err.contains("pw-5ecret-90ab"), "{err}");
    }
}

/// check-config builds every probe: a header value that HTTP cannot carry, or a variable that is not
/// set, is refused there, naming the probe and the header but never the value.
#[test]
fn unusable_header_sources_are_refused_by_check_config_without_echoing_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let check = |headers: &str| {
        let config = write_file(
            dir.path(),
            "config.yaml",
            &format!(
                "mlflow:\n  tracking_uri: http://127.0.0.1:1\n\
                 probes:\n  targets:\n    - name: model-x\n      url: http://127.0.0.1:1/\n      headers: {headers}\n"
            ),
        );
        run_exporter(
            &["--config.file", config.to_str().unwrap(), "check-config"],
            &[],
        )
    };

    let (code, out, err) = check(r#"{X-Key: "half-5ecret-e7\nother-half"}"#);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains(r#"probe "model-x": the value of header X-Key is not valid in HTTP"#),
        "{err}"
    );
    assert!(!err.contains("5ecret"), "{err}");

    let (code, out, err) = check("{X-Key: {env: PROBE_FAULTS_NEVER_SET_VARIABLE}}");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains(
            r#"probe "model-x": header X-Key: environment variable PROBE_FAULTS_NEVER_SET_VARIABLE is not set"#
        ),
        "{err}"
    );
}

/// A URL that does not even parse is refused too, and the refusal must not echo the credentials it
/// holds: they would land in the terminal or the container log, which the credentials check exists
/// to prevent.
#[test]
fn a_malformed_probe_url_with_credentials_is_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "mlflow:\n  tracking_uri: http://127.0.0.1:1\n\
         probes:\n  targets:\n    - name: typo\n      url: 'http://user:pw-5ecret-4d2e@127.0.0.1:99999/'\n",
    );
    let (code, out, err) = run_exporter(
        &["--config.file", config.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert!(err.contains("probes.targets[0] (typo)"), "{err}");
    assert!(
        !err.contains("pw-5ecret-4d2e"),
        "the password of a malformed probe URL is printed: {err}"
    );
}

#[test]
fn a_probe_timeout_longer_than_its_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let check = |probes: &str| {
        let config = write_file(
            dir.path(),
            "config.yaml",
            &format!("mlflow:\n  tracking_uri: http://127.0.0.1:1\nprobes:\n{probes}"),
        );
        run_exporter(
            &["--config.file", config.to_str().unwrap(), "check-config"],
            &[],
        )
    };

    // One target's own timeout.
    let (code, out, err) = check(
        "  targets:\n    - name: slow-model\n      url: http://127.0.0.1:1/\n      interval: 1s\n      timeout: 2s\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("probes.targets[0] (slow-model): timeout 2s is longer than the interval 1s"),
        "{err}"
    );

    // A target's short interval against the default timeout (5s).
    let (code, _, err) = check(
        "  targets:\n    - name: fast-model\n      url: http://127.0.0.1:1/\n      interval: 1s\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("probes.targets[0] (fast-model): timeout 5s is longer than the interval 1s"),
        "{err}"
    );

    // The defaults, which the built-in MLflow probe uses.
    let (code, _, err) = check("  interval: 1s\n  timeout: 2s\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("probes: timeout 2s is longer than the interval 1s"),
        "{err}"
    );

    // Equal is fine.
    let (code, _, err) = check(
        "  targets:\n    - name: tight\n      url: http://127.0.0.1:1/\n      interval: 2s\n      timeout: 2s\n",
    );
    assert_eq!(code, Some(0), "{err}");
}
