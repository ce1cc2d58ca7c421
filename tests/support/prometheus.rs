//! A real Prometheus (the Debian package's binary) for tests: scrapes given targets every second,
//! evaluates given rule files every second, and answers PromQL over its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{free_port, http_get};
use super::stop_group;

pub struct Prometheus {
    pub addr: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `job` and loading `rule_files`; waits until ready.
    pub fn start(job: &str, targets: &[&str], rule_files: &[PathBuf]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let scrape = format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        Prometheus::start_with(&scrape, rule_files)
    }

    /// Starts Prometheus with these `scrape_configs` entries (YAML list items, indented by two) and
    /// `rule_files`, scraping and evaluating every second; waits until ready.
    pub fn start_with(scrape_configs: &str, rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {:?}", p.display().to_string()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n{scrape_configs}",
            rules.join("\n"),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        let mut p = Prometheus { addr, child, dir };
        let start = Instant::now();
        while !http_get(&p.addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("prometheus exited with {s}: {}", p.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path with query parameters; the `data` of a successful answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let r = http_get(&self.addr, &format!("{path}?{query}"), &[]).map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&r.text()).map_err(|e| format!("{e}: {}", r.text()))?;
        if v["status"] != "success" {
            return Err(format!("{} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (or scalar as one element).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("/api/v1/query", &[("query", promql)])?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![data["result"].clone()],
        })
    }

    /// Values of `label` on the series of `metric` (what Grafana's `label_values` shows).
    pub fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        let data = self
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", metric)],
            )
            .unwrap_or_default();
        data.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `promql` returns at least one series.
    pub fn wait_for(&self, promql: &str, limit: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.query(promql) {
                if !r.is_empty() {
                    return r;
                }
            }
            assert!(
                start.elapsed() < limit,
                "no result for {promql} within {limit:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}
