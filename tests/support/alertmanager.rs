//! A real Alertmanager (the Debian package's binary) for tests that send it alerts, on a free port
//! with its own storage, and stopped when its handle drops.

use std::process::{Child, Command};
use std::time::Duration;

use super::http::{free_port, http_get, wait_until};
use super::{stop_group, write_file};

/// A real Alertmanager (Debian `prometheus-alertmanager`) with `config` (YAML), clustering off.
pub struct Alertmanager {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start(config: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(dir.path(), "alertmanager.yml", config);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("prometheus-alertmanager not found: install the Debian package prometheus-alertmanager (scripts/test does)");
        let am = Alertmanager {
            addr,
            child,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "Alertmanager ready", || {
            http_get(&am.addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200)
        });
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}
