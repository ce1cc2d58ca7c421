//! `--web.config.file` end to end: a real Prometheus scrapes the exporter over mutual TLS with basic
//! auth; without credentials it gets 401, with a client certificate from another CA the handshake
//! fails. The file is re-read when it changes, a bad one keeps the last good config, and a bad one
//! at start-up stops the exporter with the reason. promtool accepts the files used here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::exporter::{run_exporter, ExporterProcess};
use crate::support::http::{free_port, wait_until};
use crate::support::prometheus::Prometheus;
use crate::support::scrape::Scrape;
use crate::support::tls::{Ca, Leaf};
use crate::support::write_file;
use rcgen::ExtendedKeyUsagePurpose;

const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-secret-7f3a";

/// The certificates: the exporter's (for 127.0.0.1), a client CA and its client, and a client of an
/// unrelated CA; all written as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let server_ca = Ca::new("exporter CA");
        let server = server_ca.leaf(
            "mlflow-exporter",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client_ca = Ca::new("scraper CA");
        let client = client_ca.leaf("prometheus", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let other_ca = Ca::new("unrelated CA");
        let intruder = other_ca.leaf("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let put = |name: &str, text: String| write_file(dir, name, &text);
        put("server-ca.pem", server_ca.pem());
        put("server.pem", server.cert.pem());
        put("server-key.pem", server.key.serialize_pem());
        put("client-ca.pem", client_ca.pem());
        for (name, leaf) in [("client", &client), ("intruder", &intruder)] {
            let Leaf { cert, key } = leaf;
            put(&format!("{name}.pem"), cert.pem());
            put(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A web config with relative file names (they resolve against the file's directory), mutual TLS
/// and one user whose password is `password`.
fn web_config(password: &str) -> String {
    let hash = bcrypt::hash(password, 4).unwrap();
    format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.pem\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  {USER}: '{hash}'\n"
    )
}

fn promtool_check_web_config(path: &Path) -> (Option<i32>, String) {
    let out = Command::new("promtool")
        .arg("check")
        .arg("web-config")
        .arg(path)
        .output()
        .expect("run promtool (Debian package `prometheus`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// An HTTPS client that trusts the exporter's CA, with the client certificate `identity` if any.
fn client(pki: &Pki, identity: Option<&str>) -> reqwest::blocking::Client {
    let ca = std::fs::read(pki.path("server-ca.pem")).unwrap();
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(name) = identity {
        let mut pem = std::fs::read(pki.path(&format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(pki.path(&format!("{name}-key.pem"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// Every active target of `job` as Prometheus reports it: (health, last error).
fn target(prom: &Prometheus, job: &str) -> Option<(String, String)> {
    let data = prom.api("/api/v1/targets", &[("state", "active")]).ok()?;
    data["activeTargets"]
        .as_array()?
        .iter()
        .find(|t| t["labels"]["job"] == job)
        .map(|t| {
            (
                t["health"].as_str().unwrap_or("").to_string(),
                t["lastError"].as_str().unwrap_or("").to_string(),
            )
        })
}

#[test]
fn prometheus_scrapes_over_mutual_tls_with_basic_auth_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let web = write_file(dir.path(), "web.yml", &web_config(PASSWORD));
    let (code, out) = promtool_check_web_config(&web);
    assert_eq!(code, Some(0), "promtool rejects the web config: {out}");

    // MLflow is not needed to serve /metrics: the exporter answers with mlflow_up 0.
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let mut exporter = ExporterProcess::start(
        dir.path(),
        &["--web.config.file", web.to_str().unwrap()],
        &[("MLFLOW_TRACKING_URI", mlflow.as_str())],
    );
    let url = format!("https://{}/metrics", exporter.addr);
    let good = client(&pki, Some("client"));
    wait_until(Duration::from_secs(30), "the exporter over HTTPS", || {
        if let Ok(Some(s)) = exporter.child.try_wait() {
            panic!("exporter exited with {s}: {}", exporter.stderr());
        }
        good.get(&url).send().is_ok()
    });

    // Credentials right: the metrics, with the configured headers.
    let r = good
        .get(&url)
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "deny");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let s = Scrape::parse(&r.text().unwrap());
    assert_eq!(
        s.get("mlflow_exporter_web_config_last_reload_successful", &[]),
        1.0
    );
    assert_eq!(s.get("mlflow_up", &[]), 0.0);

    // No credentials, a wrong password, an unknown user: 401 asking for Basic, on every path.
    for path in ["/metrics", "/", "/-/healthy", "/-/ready"] {
        let u = format!("https://{}{path}", exporter.addr);
        let r = good.get(&u).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"mlflow-exporter\""
        );
        assert_eq!(
            r.headers()["x-frame-options"],
            "deny",
            "headers on refusals too"
        );
    }
    let r = good
        .get(&url)
        .basic_auth(USER, Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = good
        .get(&url)
        .basic_auth("root", Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // No client certificate, or one from another CA: the handshake fails, nothing is served.
    for who in [None, Some("intruder")] {
        let e = client(&pki, who)
            .get(&url)
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .expect_err("mutual TLS must refuse this client");
        assert!(e.is_connect() || e.is_request(), "{who:?}: {e:?}");
    }
    // Plain HTTP on the TLS port gets nothing either.
    assert!(
        support::http::http_get(&exporter.addr, "/metrics", &[]).map_or(true, |r| r.status != 200)
    );

    // A real Prometheus: one job with everything right, one without credentials, one with the
    // intruder's certificate.
    let target = format!("{:?}", exporter.addr);
    let job = |name: &str, cert: &str, auth: bool| {
        let auth = if auth {
            format!("    basic_auth:\n      username: {USER}\n      password: {PASSWORD}\n")
        } else {
            String::new()
        };
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {crt}\n      key_file: {key}\n{auth}    static_configs:\n      - targets: [{target}]\n",
            ca = pki.path("server-ca.pem"),
            crt = pki.path(&format!("{cert}.pem")),
            key = pki.path(&format!("{cert}-key.pem")),
        )
    };
    let scrape_configs = [
        job("secure", "client", true),
        job("no-auth", "client", false),
        job("wrong-ca", "intruder", true),
    ]
    .concat();
    let prom = Prometheus::start_with(&scrape_configs, &[]);
    prom.wait_for(
        r#"mlflow_exporter_build_info{job="secure"} == 1"#,
        Duration::from_secs(60),
    );
    wait_until(
        Duration::from_secs(60),
        "both refused jobs to be scraped",
        || {
            ["no-auth", "wrong-ca"]
                .iter()
                .all(|j| self::target(&prom, j).is_some_and(|(h, _)| h == "down"))
        },
    );
    let (health, error) = self::target(&prom, "secure").unwrap();
    assert_eq!((health.as_str(), error.as_str()), ("up", ""));
    let (_, error) = self::target(&prom, "no-auth").unwrap();
    assert!(error.contains("401 Unauthorized"), "{error}");
    let (_, error) = self::target(&prom, "wrong-ca").unwrap();
    assert!(
        error.contains("tls") || error.contains("certificate"),
        "{error}"
    );
    for job in ["no-auth", "wrong-ca"] {
        let up = prom.query(&format!(r#"up{{job="{job}"}}"#)).unwrap();
        assert_eq!(up[0]["value"][1], "0", "{job}");
    }
    assert!(
        !exporter.stderr().contains(PASSWORD),
        "the password is never logged"
    );
}

#[test]
fn a_changed_file_is_applied_and_a_bad_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let web = write_file(dir.path(), "web.yml", &web_config(PASSWORD));
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let exporter = ExporterProcess::start(
        dir.path(),
        &["--web.config.file", web.to_str().unwrap()],
        &[("MLFLOW_TRACKING_URI", mlflow.as_str())],
    );
    let url = format!("https://{}/metrics", exporter.addr);
    let c = client(&pki, Some("client"));
    let status = |password: &str| {
        c.get(&url)
            .basic_auth(USER, Some(password))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "the exporter over HTTPS", || {
        status(PASSWORD) == 200
    });

    // A new password: applied without a restart (the file is checked every 5 s), the old one refused.
    std::fs::write(&web, web_config("rotated-password")).unwrap();
    wait_until(Duration::from_secs(15), "the new password", || {
        status("rotated-password") == 200
    });
    assert_eq!(status(PASSWORD), 401);

    // A broken file: the last good config stays, the gauge and the log say so.
    std::fs::write(&web, "basic_auth_users:\n  prometheus: plain-text\n").unwrap();
    wait_until(Duration::from_secs(15), "the failed reload", || {
        exporter.stderr().contains("web config not reloaded")
    });
    assert_eq!(status("rotated-password"), 200);
    let s = Scrape::parse(
        &c.get(&url)
            .basic_auth(USER, Some("rotated-password"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    assert_eq!(
        s.get("mlflow_exporter_web_config_last_reload_successful", &[]),
        0.0
    );
    let log = exporter.stderr();
    assert!(
        log.contains("basic_auth_users.prometheus: not a bcrypt hash"),
        "{log}"
    );
    assert!(
        !log.contains("plain-text"),
        "a hash field is never echoed: {log}"
    );
}

#[test]
fn a_bad_file_at_start_up_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let cases = [
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing-key.pem\n",
            "tls_server_config.cert_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: a.pem\n",
            "tls_server_config.key_file: missing",
        ),
        (
            "basic_auth_users:\n  u: nothash\n",
            "basic_auth_users.u: not a bcrypt hash",
        ),
        ("tls_srv_config: {}\n", "unknown field `tls_srv_config`"),
    ];
    for (yaml, want) in cases {
        let web = write_file(dir.path(), "bad.yml", yaml);
        let (code, _, err) = run_exporter(
            &["--web.config.file", web.to_str().unwrap(), "check-config"],
            &[("MLFLOW_TRACKING_URI", &mlflow)],
        );
        assert_eq!(code, Some(2), "{yaml}: {err}");
        assert!(
            err.contains("web config") && err.contains(want),
            "{yaml}: {err}"
        );
        assert!(!err.contains("nothash"), "{err}");
    }
}

#[test]
fn the_deploy_example_passes_promtool_and_serves_https_with_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // The example names tls.crt and tls.key beside it, as a Kubernetes TLS secret mounts them.
    std::fs::copy(pki.path("server.pem"), dir.path().join("tls.crt")).unwrap();
    std::fs::copy(pki.path("server-key.pem"), dir.path().join("tls.key")).unwrap();
    let web = dir.path().join("web-config.yml");
    std::fs::copy(
        support::project_dir().join("deploy/web-config.example.yml"),
        &web,
    )
    .unwrap();
    let (code, out) = promtool_check_web_config(&web);
    assert_eq!(code, Some(0), "promtool rejects the example: {out}");

    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let mut exporter = ExporterProcess::start(
        dir.path(),
        &["--web.config.file", web.to_str().unwrap()],
        &[("MLFLOW_TRACKING_URI", mlflow.as_str())],
    );
    let c = client(&pki, None);
    let url = format!("https://{}/-/healthy", exporter.addr);
    wait_until(Duration::from_secs(30), "the exporter over HTTPS", || {
        if let Ok(Some(s)) = exporter.child.try_wait() {
            panic!("exporter exited with {s}: {}", exporter.stderr());
        }
        c.get(&url).send().is_ok()
    });
    let r = c
        .get(&url)
        .basic_auth("prometheus", Some("change-me"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.text().unwrap(), "Healthy\n");
    assert_eq!(c.get(&url).send().unwrap().status(), 401);
}
