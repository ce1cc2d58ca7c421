//! The synthetic MLflow of a bench: this same program, run again in another process with an
//! environment variable set, serving on 127.0.0.1 until its parent closes its stdin, so that the
//! server's CPU and memory are not the measured process's.
// Each bench uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the server process when dropped, whatever happens to the bench.
pub struct ServerGuard(pub Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this program again with `var=value` and reads the port it prints.
pub fn spawn(var: &str, value: &str) -> (ServerGuard, u16) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(var, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ServerGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().expect("the server's port");
    (guard, port)
}

/// Serves `app` on a free port of 127.0.0.1, printing the port, until stdin closes (the parent
/// closed it, or died).
pub async fn serve(app: axum::Router) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let stop = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
        })
        .await
        .unwrap();
}

/// The exporter's default settings against the server at `base`, its store in `dir`, without
/// the probe of MLflow's `/health` (which the synthetic servers do not serve).
pub fn settings(base: &str, dir: &std::path::Path) -> mlflow_exporter::config::Settings {
    let mut settings = mlflow_exporter::config::Settings::default();
    settings.mlflow.tracking_uri = base.to_string();
    settings.storage.path = dir.join("events.db");
    settings.probes.mlflow_health = false;
    settings.validate().expect("valid settings");
    settings
}
