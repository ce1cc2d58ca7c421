//! Slow and greedy clients against the exporter binary: a request head sent slowly or not at all,
//! more connections than allowed, a body trickled a byte at a time, and a webhook flood. Each is
//! cut off within its bound, and the exporter keeps answering the others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::exporter::ExporterProcess;
use crate::support::http::{free_port, http_get, http_post, wait_until};

const TOKEN: &str = "events-token-for-limits";

fn start(dir: &std::path::Path) -> ExporterProcess {
    let mlflow = format!("http://127.0.0.1:{}", free_port());
    let mut e = ExporterProcess::start(
        dir,
        &[],
        &[
            ("MLFLOW_TRACKING_URI", mlflow.as_str()),
            ("MLFLOW_EXPORTER_WEB__READ_HEADER_TIMEOUT", "1s"),
            ("MLFLOW_EXPORTER_WEB__REQUEST_TIMEOUT", "2s"),
            ("MLFLOW_EXPORTER_WEB__MAX_CONNECTIONS", "4"),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__ENABLED", "true"),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", TOKEN),
            ("MLFLOW_EXPORTER_WEBHOOKS__RATE_LIMIT", "1"),
            ("MLFLOW_EXPORTER_WEBHOOKS__RATE_BURST", "3"),
        ],
    );
    wait_until(Duration::from_secs(30), "the exporter", || {
        if let Ok(Some(s)) = e.child.try_wait() {
            panic!("exporter exited with {s}: {}", e.stderr());
        }
        http_get(&e.addr, "/-/healthy", &[]).is_ok_and(|r| r.status == 200)
    });
    e
}

/// Seconds until the server closes `conn` (reads until EOF or error), at most `limit`.
fn closed_after(conn: &mut TcpStream, limit: Duration) -> Option<f64> {
    let start = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed().as_secs_f64()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed().as_secs_f64()),
        }
    }
    None
}

#[test]
fn slow_heads_and_idle_connections_are_cut_and_the_connection_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());

    // Half a request head, then nothing: closed after the 1 s head timeout.
    let mut slow = TcpStream::connect(&e.addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = closed_after(&mut slow, Duration::from_secs(5)).expect("a slow head is cut off");
    assert!((0.9..3.0).contains(&t), "closed after {t} s");

    // Connected and silent: closed too.
    let mut silent = TcpStream::connect(&e.addr).unwrap();
    let t = closed_after(&mut silent, Duration::from_secs(5)).expect("a silent client is cut off");
    assert!(t < 3.0, "closed after {t} s");

    // Four connections hold every slot: a fifth is closed at once, unanswered.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(&e.addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(&e.addr).unwrap();
    let _ = fifth.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = closed_after(&mut fifth, Duration::from_secs(1)).expect("over the cap: closed");
    assert!(t < 0.5, "closed after {t} s");
    // Once their heads time out, the slots are free and the exporter answers again.
    for c in &mut held {
        closed_after(c, Duration::from_secs(5)).expect("held connections time out");
    }
    assert_eq!(http_get(&e.addr, "/-/healthy", &[]).unwrap().status, 200);
}

#[test]
fn a_trickled_body_gets_408_and_a_flood_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());

    // A complete head announcing 100 bytes, then 10 of them: 408 after the 2 s request timeout.
    let mut trickle = TcpStream::connect(&e.addr).unwrap();
    trickle
        .write_all(
            format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":\"d"
            )
            .as_bytes(),
        )
        .unwrap();
    let start = Instant::now();
    trickle
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut answer = String::new();
    let _ = trickle.read_to_string(&mut answer);
    let took = start.elapsed().as_secs_f64();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("web.request_timeout"), "{answer}");
    assert!((1.9..4.0).contains(&took), "answered after {took} s");

    // Five requests at once with a wrong token, from one address, at 1/s with a burst of 3: the
    // first three are judged on their token (401), the rest are refused before it (429).
    let post_wrong = || {
        let r = http_post(
            &e.addr,
            "/api/v1/events",
            &[("Authorization", "Bearer wrong")],
            b"{}",
        )
        .unwrap();
        (r.status, r.headers.get("retry-after").cloned())
    };
    let statuses: Vec<(u16, Option<String>)> = (0..5).map(|_| post_wrong()).collect();
    assert_eq!(
        statuses,
        [
            (401, None),
            (401, None),
            (401, None),
            (429, Some("1".to_string())),
            (429, Some("1".to_string())),
        ]
    );
    // Counted (the exposition is re-encoded at most 1 s after a change).
    wait_until(Duration::from_secs(3), "5 refusals counted", || {
        e.scrape().get(
            "mlflow_exporter_events_total",
            &[("source", "api"), ("outcome", "rejected")],
        ) == 5.0
    });
    // A second later the bucket has refilled: judged on the token again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(post_wrong(), (401, None));
    // Scrapes are not rate limited.
    for _ in 0..20 {
        assert_eq!(http_get(&e.addr, "/metrics", &[]).unwrap().status, 200);
    }
}
