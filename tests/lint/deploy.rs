//! The deployment files, checked offline as far as they can be without a cluster or a Docker engine:
//!
//! - `deploy/kubernetes`: both kustomizations are rendered (`kubectl kustomize` where it is
//!   installed, else a renderer of the few kustomize features they use, which is compared with
//!   kubectl's output where both exist), every object is validated against the Kubernetes schemas
//!   of `kubernetes-validate`, the prometheus-operator objects (no schema there) structurally, and
//!   the wiring is asserted: security settings, probes, ports and names across Service,
//!   ServiceMonitor, NetworkPolicy and container, Secret references, the volume of the event
//!   store, the PrometheusRule against `deploy/prometheus/rules`, and the configuration in the
//!   ConfigMap through the exporter's own `check-config` with the Deployment's environment.
//! - `deploy/alertmanager/alertmanager.yml`: `amtool check-config`, and `amtool config routes
//!   test` for where model incidents and other alerts go.
//! - `deploy/compose`: every file it mounts exists, Prometheus's configuration as mounted passes
//!   `promtool check config` and loads every rules file, Alertmanager's as mounted passes amtool
//!   and finds its token, Grafana's provisioning points at mounted dashboards, the exporter's
//!   configuration passes `check-config`, and the names, ports and tokens agree.
//! - `Dockerfile`: hadolint, the stages, user, port and entry point, and a build context that
//!   holds everything `cargo` needs (`cargo fetch --locked --offline` on a copy of it).
//!
//! What stays unchecked here: that the images exist and build (no Docker engine), and that a cluster
//! with prometheus-operator accepts the objects (no cluster).

use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{project_dir, venv_bin};

// --- helpers ---------------------------------------------------------------------------------------

fn k8s_dir() -> PathBuf {
    project_dir().join("deploy/kubernetes")
}

fn compose_dir() -> PathBuf {
    project_dir().join("deploy/compose")
}

/// A program of a Debian package that scripts/test installs.
fn debian_tool(name: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install the Debian package {package} (scripts/test does)"
    );
    Command::new(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(src: &str, what: &str) -> Value {
    serde_yaml_ng::from_str(src).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
}

fn read_yaml(path: &Path) -> Value {
    yaml(&read(path), &path.display().to_string())
}

/// Every non-empty document of a multi-document YAML stream.
fn yaml_docs(src: &str, what: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(src)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what} is not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

static NULL: Value = Value::Null;

/// The value at a path of mapping keys and sequence indexes; `Null` where there is none.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = match cur {
            Value::Mapping(m) => m.get(*key).unwrap_or(&NULL),
            Value::Sequence(s) => key
                .parse::<usize>()
                .ok()
                .and_then(|i| s.get(i))
                .unwrap_or(&NULL),
            _ => &NULL,
        };
    }
    cur
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .as_sequence()
        .map(|s| s.as_slice())
        .unwrap_or(&[])
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is on `labels` (a Kubernetes equality selector).
fn selects(selector: &Value, labels: &Value) -> bool {
    let (sel, lab) = (string_map(selector), string_map(labels));
    !sel.is_empty() && sel.iter().all(|(k, v)| lab.get(k) == Some(v))
}

/// `30s`, `1m`, `2h` in seconds.
fn duration_secs(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("duration {d:?}: unit {unit:?}"),
    }
}

fn cargo_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `MLFLOW_VERSION` of scripts/setup.sh: the MLflow the tests run against.
fn setup_mlflow_version() -> String {
    let src = read(&project_dir().join("scripts/setup.sh"));
    let line = src
        .lines()
        .find(|l| l.starts_with("MLFLOW_VERSION="))
        .expect("MLFLOW_VERSION= in scripts/setup.sh");
    let v = line.rsplit(":-").next().unwrap();
    v.trim_end_matches(['}', '"']).to_string()
}

/// The UID and GID of the Dockerfile's final `USER`.
fn dockerfile_user() -> (i64, i64) {
    let df = dockerfile();
    let last = df.stages.last().unwrap();
    let user = last
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the final stage");
    let (u, g) = user.split_once(':').unwrap_or((&user, &user));
    (
        u.parse().expect("numeric USER (runAsNonRoot needs one)"),
        g.parse().expect("numeric group"),
    )
}

/// The exporter binary's `check-config` with exactly this environment: its effective configuration.
fn check_config(args: &[String], env: &BTreeMap<String, String>) -> Value {
    let out = run(Command::new(env!("CARGO_BIN_EXE_mlflow-exporter"))
        .arg("check-config")
        .args(args)
        .env_clear()
        .envs(env));
    assert!(
        out.status.success(),
        "check-config {args:?} failed: {}",
        text(&out)
    );
    yaml(
        &String::from_utf8_lossy(&out.stdout),
        "check-config's output",
    )
}

// --- kustomize ---------------------------------------------------------------------------------------

mod kustomize;

use kustomize::{by_kind_name, render, render_fallback, render_with_kustomize};

const OVERLAYS: [&str; 2] = ["base", "sidecar"];

#[test]
fn fallback_renderer_agrees_with_kustomize() {
    for overlay in OVERLAYS {
        let dir = k8s_dir().join(overlay);
        let Some(real) = render_with_kustomize(&dir) else {
            eprintln!(
                "neither kubectl nor kustomize is installed: the fallback renderer is unchecked"
            );
            return;
        };
        let (real, ours) = (by_kind_name(&real), by_kind_name(&render_fallback(&dir)));
        assert_eq!(
            real.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{overlay}: objects"
        );
        for (key, obj) in &real {
            assert_eq!(obj, &ours[key], "{overlay}: {key} renders differently");
        }
    }
}

/// The Kubernetes versions the manifests must be valid for: an old one still in support by the
/// big providers, and the newest that kubernetes-validate knows.
const K8S_VERSIONS: [&str; 2] = ["1.30", "1.37"];
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validate = venv_bin("kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let objects = render(&k8s_dir().join(overlay));
        assert!(!objects.is_empty(), "{overlay} renders nothing");
        let file = dir.path().join(format!("{overlay}.yaml"));
        let stream: Vec<String> = objects
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).unwrap())
            .collect();
        std::fs::write(&file, stream.join("---\n")).unwrap();
        for version in K8S_VERSIONS {
            let out = run(Command::new(&validate)
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file));
            let said = text(&out);
            assert!(
                out.status.success(),
                "{overlay} against Kubernetes {version}:\n{said}"
            );
            // A kind without a schema (a typo in apiVersion, say) is only a warning there.
            for line in said.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    CRD_KINDS.iter().any(|k| line.contains(&format!(
                        "Couldn't find schema for kind {k} with api version monitoring.coreos.com/v1"
                    ))),
                    "{overlay} against Kubernetes {version}: {line}"
                );
            }
        }
        let validated = objects
            .iter()
            .filter(|o| !CRD_KINDS.contains(&s(o, &["kind"])))
            .count();
        assert!(
            validated >= 6,
            "{overlay}: only {validated} objects validated"
        );
    }
}

// --- the rendered objects ----------------------------------------------------------------------------

struct Rendered {
    overlay: &'static str,
    objects: Vec<Value>,
}

impl Rendered {
    fn of(overlay: &'static str) -> Rendered {
        Rendered {
            overlay,
            objects: render(&k8s_dir().join(overlay)),
        }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| s(o, &["kind"]) == kind)
            .collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|o| s(o, &["metadata", "name"]) == name)
            .collect();
        assert_eq!(found.len(), 1, "{}: {kind}/{name}", self.overlay);
        found[0]
    }

    /// The Deployment holding the exporter's container, and that container.
    fn exporter(&self) -> (&Value, &Value) {
        let mut found = Vec::new();
        for d in self.all("Deployment") {
            for c in seq(d, &["spec", "template", "spec", "containers"]) {
                if s(c, &["image"]).starts_with("mlflow-exporter:") {
                    found.push((d, c));
                }
            }
        }
        assert_eq!(found.len(), 1, "{}: one exporter container", self.overlay);
        found[0]
    }
}

const NAMESPACE: &str = "mlflow";
const EXPORTER: &str = "mlflow-exporter";
const PORT_NAME: &str = "metrics";

#[test]
fn kustomizations_hold_the_expected_objects() {
    let expect = |overlay: &str| -> BTreeSet<String> {
        let mut e: BTreeSet<String> = [
            "ServiceAccount/mlflow-exporter",
            "PersistentVolumeClaim/mlflow-exporter-data",
            "Service/mlflow-exporter",
            "ServiceMonitor/mlflow-exporter",
            "PrometheusRule/mlflow-exporter",
            "NetworkPolicy/mlflow-exporter",
            "ConfigMap/mlflow-exporter-config",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if overlay == "base" {
            e.insert("Deployment/mlflow-exporter".into());
        } else {
            e.insert("Deployment/mlflow".into());
            e.insert("Service/mlflow".into());
        }
        e
    };
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        let got: BTreeSet<String> = by_kind_name(&r.objects).into_keys().collect();
        assert_eq!(got, expect(overlay), "{overlay}");
        for o in &r.objects {
            assert_eq!(
                s(o, &["metadata", "namespace"]),
                NAMESPACE,
                "{overlay}: namespace of {:?}",
                s(o, &["metadata", "name"])
            );
        }
    }
}

/// Non-root, read-only, no capabilities, RuntimeDefault seccomp, requests and limits: on every
/// container of every Deployment.
#[test]
fn deployments_are_locked_down() {
    let (uid, gid) = dockerfile_user();
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        for d in r.all("Deployment") {
            let name = s(d, &["metadata", "name"]);
            let ctx = format!("{overlay}: Deployment {name}");
            let pod = at(d, &["spec", "template", "spec"]);
            // The event store is one SQLite file on a ReadWriteOnce volume: one writer at a time.
            assert_eq!(at(d, &["spec", "replicas"]).as_i64(), Some(1), "{ctx}");
            assert_eq!(s(d, &["spec", "strategy", "type"]), "Recreate", "{ctx}");
            assert!(
                selects(
                    at(d, &["spec", "selector", "matchLabels"]),
                    at(d, &["spec", "template", "metadata", "labels"])
                ),
                "{ctx}: selector"
            );
            assert_eq!(
                at(pod, &["automountServiceAccountToken"]).as_bool(),
                Some(false),
                "{ctx}"
            );
            // Service links would set MLFLOW_PORT=tcp://... for a Service named mlflow.
            assert_eq!(
                at(pod, &["enableServiceLinks"]).as_bool(),
                Some(false),
                "{ctx}"
            );
            let psc = at(pod, &["securityContext"]);
            assert_eq!(at(psc, &["runAsNonRoot"]).as_bool(), Some(true), "{ctx}");
            assert_eq!(
                at(psc, &["runAsUser"]).as_i64(),
                Some(uid),
                "{ctx}: the image's user"
            );
            assert_eq!(at(psc, &["runAsGroup"]).as_i64(), Some(gid), "{ctx}");
            assert_eq!(
                at(psc, &["fsGroup"]).as_i64(),
                Some(gid),
                "{ctx}: the volume's group"
            );
            assert_eq!(
                s(psc, &["seccompProfile", "type"]),
                "RuntimeDefault",
                "{ctx}"
            );
            let volumes: BTreeMap<&str, &Value> = seq(pod, &["volumes"])
                .iter()
                .map(|v| (s(v, &["name"]), v))
                .collect();
            let containers = seq(pod, &["containers"]);
            assert!(!containers.is_empty(), "{ctx}");
            for c in containers {
                let ctx = format!("{ctx}, container {}", s(c, &["name"]));
                let sc = at(c, &["securityContext"]);
                assert_eq!(at(sc, &["runAsNonRoot"]).as_bool(), Some(true), "{ctx}");
                assert_eq!(
                    at(sc, &["allowPrivilegeEscalation"]).as_bool(),
                    Some(false),
                    "{ctx}"
                );
                assert_eq!(
                    at(sc, &["readOnlyRootFilesystem"]).as_bool(),
                    Some(true),
                    "{ctx}"
                );
                assert_eq!(
                    seq(sc, &["capabilities", "drop"]),
                    [Value::from("ALL")],
                    "{ctx}"
                );
                assert!(seq(sc, &["capabilities", "add"]).is_empty(), "{ctx}");
                assert_eq!(
                    s(sc, &["seccompProfile", "type"]),
                    "RuntimeDefault",
                    "{ctx}"
                );
                assert!(at(sc, &["privileged"]).as_bool() != Some(true), "{ctx}");
                for kind in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(
                            !s(c, &["resources", kind, res]).is_empty(),
                            "{ctx}: resources.{kind}.{res}"
                        );
                    }
                }
                // With a read-only root, /tmp is a volume of its own.
                let mounts = seq(c, &["volumeMounts"]);
                let tmp = mounts
                    .iter()
                    .find(|m| s(m, &["mountPath"]) == "/tmp")
                    .unwrap_or_else(|| panic!("{ctx}: /tmp"));
                assert!(
                    !at(volumes[s(tmp, &["name"])], &["emptyDir"]).is_null(),
                    "{ctx}: /tmp is an emptyDir"
                );
                for m in mounts {
                    assert!(
                        volumes.contains_key(s(m, &["name"])),
                        "{ctx}: volume of {m:?}"
                    );
                }
                // Probes on named ports of the container itself.
                let ports: BTreeSet<&str> =
                    seq(c, &["ports"]).iter().map(|p| s(p, &["name"])).collect();
                for probe in ["livenessProbe", "readinessProbe"] {
                    let port = s(c, &[probe, "httpGet", "port"]);
                    assert!(ports.contains(port), "{ctx}: {probe} on port {port:?}");
                }
                // Nothing secret as a literal value.
                for e in seq(c, &["env"]) {
                    let n = s(e, &["name"]);
                    if ["TOKEN", "PASSWORD", "SECRET", "URI"]
                        .iter()
                        .any(|w| n.ends_with(w))
                        && n != "MLFLOW_TRACKING_URI"
                    {
                        assert!(
                            !at(e, &["valueFrom", "secretKeyRef"]).is_null(),
                            "{ctx}: {n} must come from a Secret"
                        );
                    }
                }
            }
            // Port names are unique in a pod.
            let names: Vec<&str> = containers
                .iter()
                .flat_map(|c| seq(c, &["ports"]).iter().map(|p| s(p, &["name"])))
                .collect();
            assert_eq!(
                names.len(),
                names.iter().collect::<BTreeSet<_>>().len(),
                "{ctx}: {names:?}"
            );
        }
    }
}

#[test]
fn exporter_container_probes_ports_volumes_and_secrets() {
    let base_env = |r: &Rendered| -> Vec<String> {
        seq(r.exporter().1, &["env"])
            .iter()
            .map(|e| s(e, &["name"]).to_string())
            .collect()
    };
    let base_names = base_env(&Rendered::of("base"));
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        let (d, c) = r.exporter();
        let ctx = format!("{overlay}: exporter");
        let pod = at(d, &["spec", "template", "spec"]);
        // Liveness on /-/healthy; readiness on /-/ready standalone, /-/healthy as a sidecar (the
        // pod is MLflow's: it must not leave MLflow's Service before the exporter's first sync).
        assert_eq!(
            s(c, &["livenessProbe", "httpGet", "path"]),
            "/-/healthy",
            "{ctx}"
        );
        let ready = if overlay == "base" {
            "/-/ready"
        } else {
            "/-/healthy"
        };
        assert_eq!(s(c, &["readinessProbe", "httpGet", "path"]), ready, "{ctx}");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                s(c, &[probe, "httpGet", "port"]),
                PORT_NAME,
                "{ctx}: {probe}"
            );
        }
        let port = seq(c, &["ports"])
            .iter()
            .find(|p| s(p, &["name"]) == PORT_NAME)
            .unwrap_or_else(|| panic!("{ctx}: port {PORT_NAME}"));
        assert_eq!(at(port, &["containerPort"]).as_u64(), Some(9868), "{ctx}");
        assert_eq!(
            s(c, &["image"]),
            format!("mlflow-exporter:{}", cargo_version()),
            "{ctx}: image tag is the crate's version"
        );

        // The config file comes from the generated ConfigMap, /data from the PVC.
        let args: Vec<&str> = seq(c, &["args"])
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let flag = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{name}=")))
                .unwrap_or_else(|| panic!("{ctx}: --{name}"))
                .to_string()
        };
        let (config_file, storage) = (flag("config.file"), flag("storage.path"));
        let mount_of = |path: &str| {
            let m = seq(c, &["volumeMounts"])
                .iter()
                .filter(|m| path.starts_with(&format!("{}/", s(m, &["mountPath"]))))
                .max_by_key(|m| s(m, &["mountPath"]).len())
                .unwrap_or_else(|| panic!("{ctx}: no volume holds {path}"));
            let v = seq(pod, &["volumes"])
                .iter()
                .find(|v| s(v, &["name"]) == s(m, &["name"]))
                .unwrap();
            (m, v)
        };
        let (cm_mount, cm_volume) = mount_of(&config_file);
        assert_eq!(at(cm_mount, &["readOnly"]).as_bool(), Some(true), "{ctx}");
        let cm = r.one("ConfigMap", s(cm_volume, &["configMap", "name"]));
        let key = config_file.rsplit('/').next().unwrap();
        let config_text = s(cm, &["data", key]);
        assert_eq!(
            config_text,
            read(&k8s_dir().join("base").join(key)),
            "{ctx}: the ConfigMap holds base/{key}"
        );
        let (data_mount, data_volume) = mount_of(&storage);
        assert_eq!(s(data_mount, &["mountPath"]), "/data", "{ctx}");
        let pvc = r.one(
            "PersistentVolumeClaim",
            s(data_volume, &["persistentVolumeClaim", "claimName"]),
        );
        assert_eq!(
            seq(pvc, &["spec", "accessModes"]),
            [Value::from("ReadWriteOnce")]
        );
        assert!(!s(pvc, &["spec", "resources", "requests", "storage"]).is_empty());

        // Credentials and webhook secrets from the Secret; the webhooks config.yaml enables need
        // theirs (not optional).
        let env: BTreeMap<&str, &Value> = seq(c, &["env"])
            .iter()
            .map(|e| (s(e, &["name"]), e))
            .collect();
        for (var, required) in [
            ("MLFLOW_TRACKING_TOKEN", false),
            ("MLFLOW_TRACKING_USERNAME", false),
            ("MLFLOW_TRACKING_PASSWORD", false),
            ("MLFLOW_EXPORTER_WEBHOOKS__MLFLOW__SECRET", true),
            ("MLFLOW_EXPORTER_WEBHOOKS__ALERTMANAGER__TOKEN", true),
            ("MLFLOW_EXPORTER_WEBHOOKS__EVENTS__TOKEN", true),
        ] {
            let e = env.get(var).unwrap_or_else(|| panic!("{ctx}: env {var}"));
            let r = at(e, &["valueFrom", "secretKeyRef"]);
            assert_eq!(s(r, &["name"]), EXPORTER, "{ctx}: {var}");
            assert!(!s(r, &["key"]).is_empty(), "{ctx}: {var}");
            assert_eq!(
                at(r, &["optional"]).as_bool().unwrap_or(false),
                !required,
                "{ctx}: {var} optional"
            );
        }
        assert_eq!(
            base_env(&r),
            base_names,
            "{ctx}: same variables as the base"
        );

        // The exporter accepts this configuration with this environment, and every secret lands
        // where it should (a misspelt variable would be ignored, not refused).
        let dir = tempfile::tempdir().unwrap();
        let local = |p: &str| dir.path().join(p.trim_start_matches('/'));
        std::fs::create_dir_all(local(&config_file).parent().unwrap()).unwrap();
        std::fs::write(local(&config_file), config_text).unwrap();
        let mut vars = BTreeMap::new();
        for (name, e) in &env {
            let v = match at(e, &["value"]).as_str() {
                Some(v) => v.to_string(),
                None => format!(
                    "from-secret-{}",
                    s(e, &["valueFrom", "secretKeyRef", "key"])
                ),
            };
            vars.insert(name.to_string(), v);
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((f, p)) if p.starts_with('/') => format!("{f}={}", local(p).display()),
                _ => a.to_string(),
            })
            .collect();
        let eff = check_config(&args, &vars);
        for path in [
            &["mlflow", "token"][..],
            &["mlflow", "password"],
            &["webhooks", "mlflow", "secret"],
            &["webhooks", "alertmanager", "token"],
            &["webhooks", "events", "token"],
        ] {
            assert_eq!(s(&eff, path), "<redacted>", "{ctx}: {path:?} is set");
        }
        assert_eq!(
            s(&eff, &["mlflow", "username"]),
            "from-secret-mlflow-tracking-username"
        );
        for w in ["mlflow", "alertmanager", "events"] {
            assert_eq!(
                at(&eff, &["webhooks", w, "enabled"]).as_bool(),
                Some(true),
                "{w}"
            );
        }
        assert_eq!(
            s(&eff, &["mlflow", "tracking_uri"]),
            s(env["MLFLOW_TRACKING_URI"], &["value"])
        );
        assert_eq!(
            s(&eff, &["storage", "path"]),
            local(&storage).display().to_string()
        );
        assert_eq!(s(&eff, &["web", "listen_address"]), ":9868", "{ctx}");
    }
}

#[test]
fn service_servicemonitor_and_networkpolicy_agree_with_the_pod() {
    for overlay in OVERLAYS {
        let r = Rendered::of(overlay);
        let (d, c) = r.exporter();
        let ctx = overlay;
        let pod_labels = at(d, &["spec", "template", "metadata", "labels"]);
        let port = seq(c, &["ports"])
            .iter()
            .find(|p| s(p, &["name"]) == PORT_NAME)
            .unwrap();

        let svc = r.one("Service", EXPORTER);
        assert!(
            selects(at(svc, &["spec", "selector"]), pod_labels),
            "{ctx}: Service selector"
        );
        let svc_port = seq(svc, &["spec", "ports"])
            .iter()
            .find(|p| {
                s(p, &["targetPort"]) == PORT_NAME
                    || at(p, &["targetPort"]).as_u64() == at(port, &["containerPort"]).as_u64()
            })
            .unwrap_or_else(|| panic!("{ctx}: a Service port targets the container's"));
        let svc_port_name = s(svc_port, &["name"]);
        assert!(!svc_port_name.is_empty());

        // ServiceMonitor: only fields prometheus-operator knows, the Service by label, its port by name.
        let sm = r.one("ServiceMonitor", EXPORTER);
        assert_eq!(s(sm, &["apiVersion"]), "monitoring.coreos.com/v1");
        let allowed: BTreeSet<String> = [
            "selector",
            "endpoints",
            "namespaceSelector",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let spec = at(sm, &["spec"]);
        assert!(
            keys(spec).is_subset(&allowed),
            "{ctx}: ServiceMonitor spec {:?}",
            keys(spec)
        );
        assert!(
            selects(
                at(spec, &["selector", "matchLabels"]),
                at(svc, &["metadata", "labels"])
            ),
            "{ctx}: ServiceMonitor selects the Service"
        );
        let ns = at(spec, &["namespaceSelector"]);
        assert!(
            ns.is_null() || seq(ns, &["matchNames"]).contains(&Value::from(NAMESPACE)),
            "{ctx}"
        );
        // The rules select job="mlflow-exporter": the job label is the Service's name.
        assert!(
            at(spec, &["jobLabel"]).is_null(),
            "{ctx}: job label is the Service name"
        );
        assert_eq!(s(svc, &["metadata", "name"]), rules_job());
        let endpoint_keys: BTreeSet<String> = [
            "port",
            "path",
            "scheme",
            "interval",
            "scrapeTimeout",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let endpoints = seq(spec, &["endpoints"]);
        assert!(!endpoints.is_empty(), "{ctx}");
        for e in endpoints {
            assert!(
                keys(e).is_subset(&endpoint_keys),
                "{ctx}: endpoint {:?}",
                keys(e)
            );
            assert_eq!(s(e, &["port"]), svc_port_name, "{ctx}: endpoint port");
            assert_eq!(s(e, &["path"]), "/metrics", "{ctx}");
            let (interval, timeout) = (s(e, &["interval"]), s(e, &["scrapeTimeout"]));
            assert!(duration_secs(timeout) <= duration_secs(interval), "{ctx}");
        }

        // NetworkPolicy: covers the pod and lets Prometheus in on the container's port.
        let np = r.one("NetworkPolicy", EXPORTER);
        assert!(
            selects(at(np, &["spec", "podSelector", "matchLabels"]), pod_labels),
            "{ctx}: NetworkPolicy selects the pod"
        );
        assert!(seq(np, &["spec", "policyTypes"]).contains(&Value::from("Ingress")));
        let allows = |port_name: &str, number: u64| {
            seq(np, &["spec", "ingress"]).iter().any(|rule| {
                seq(rule, &["ports"]).iter().any(|p| {
                    s(p, &["port"]) == port_name || at(p, &["port"]).as_u64() == Some(number)
                })
            })
        };
        assert!(allows(PORT_NAME, 9868), "{ctx}: ingress to {PORT_NAME}");
        let monitoring = seq(np, &["spec", "ingress"]).iter().any(|rule| {
            seq(rule, &["from"]).iter().any(|f| {
                s(
                    f,
                    &[
                        "namespaceSelector",
                        "matchLabels",
                        "kubernetes.io/metadata.name",
                    ],
                ) == "monitoring"
            }) && seq(rule, &["ports"])
                .iter()
                .any(|p| s(p, &["port"]) == PORT_NAME)
        });
        assert!(
            monitoring,
            "{ctx}: Prometheus and Alertmanager (monitoring) may scrape and post"
        );
        // Every named port of the policy is a port of the pod.
        let pod_ports: BTreeSet<&str> = seq(d, &["spec", "template", "spec", "containers"])
            .iter()
            .flat_map(|c| seq(c, &["ports"]).iter().map(|p| s(p, &["name"])))
            .collect();
        for rule in seq(np, &["spec", "ingress"]) {
            for p in seq(rule, &["ports"]) {
                if let Some(name) = at(p, &["port"]).as_str() {
                    assert!(pod_ports.contains(name), "{ctx}: NetworkPolicy port {name}");
                }
            }
        }
        if overlay == "sidecar" {
            // The policy now covers MLflow: its clients must still reach it.
            assert!(allows("http", 5000), "{ctx}: MLflow's own port");
            let mlflow = r.one("Service", "mlflow");
            assert!(selects(at(mlflow, &["spec", "selector"]), pod_labels));
            let mlflow_c = seq(d, &["spec", "template", "spec", "containers"])
                .iter()
                .find(|c| s(c, &["name"]) == "mlflow")
                .expect("the MLflow container");
            assert_eq!(
                s(mlflow_c, &["image"]),
                format!("ghcr.io/mlflow/mlflow:v{}", setup_mlflow_version()),
                "the MLflow the tests run against"
            );
            let env = |container: &Value, n: &str| {
                seq(container, &["env"])
                    .iter()
                    .find(|e| s(e, &["name"]) == n)
                    .map(|e| s(e, &["value"]).to_string())
                    .unwrap_or_default()
            };
            assert_eq!(env(mlflow_c, "MLFLOW_PORT"), "5000");
            // MLflow 3 answers only the Host headers it allows: the exporter's among them.
            assert!(env(mlflow_c, "MLFLOW_SERVER_ALLOWED_HOSTS")
                .split(',')
                .any(|h| h == "127.0.0.1:*"));
            assert_eq!(
                env(c, "MLFLOW_TRACKING_URI"),
                "http://127.0.0.1:5000",
                "the sidecar reads MLflow on loopback"
            );
        }
    }
}

// --- the PrometheusRule ------------------------------------------------------------------------------

fn rules_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(project_dir().join("deploy/prometheus/rules"))
        .expect("deploy/prometheus/rules")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no rules files in deploy/prometheus/rules"
    );
    files
}

fn rules_groups() -> Vec<Value> {
    rules_files()
        .iter()
        .flat_map(|f| seq(&read_yaml(f), &["groups"]).to_vec())
        .collect()
}

/// The `job` the alerting rules select the exporter by.
fn rules_job() -> String {
    let re = regex::Regex::new(r#"job="([^"]+)""#).unwrap();
    let jobs: BTreeSet<String> = rules_files()
        .iter()
        .flat_map(|f| {
            re.captures_iter(&read(f))
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(jobs.len() <= 1, "the rules select several jobs: {jobs:?}");
    jobs.into_iter().next().unwrap_or_else(|| EXPORTER.into())
}

#[test]
fn prometheusrule_is_generated_from_the_rules_files() {
    let committed = read_yaml(&k8s_dir().join("base/prometheusrule.yaml"));
    let stale =
        "deploy/kubernetes/base/prometheusrule.yaml is not what gen-prometheusrule.sh makes \
                 of deploy/prometheus/rules: run deploy/kubernetes/gen-prometheusrule.sh";
    assert_eq!(s(&committed, &["apiVersion"]), "monitoring.coreos.com/v1");
    assert_eq!(s(&committed, &["kind"]), "PrometheusRule");
    assert_eq!(s(&committed, &["metadata", "name"]), EXPORTER);
    assert_eq!(
        keys(at(&committed, &["spec"])),
        BTreeSet::from(["groups".to_string()])
    );
    assert_eq!(
        seq(&committed, &["spec", "groups"]),
        rules_groups(),
        "{stale}"
    );

    // Structure prometheus-operator requires of each group and rule.
    let group_keys: BTreeSet<String> = [
        "name",
        "interval",
        "rules",
        "limit",
        "query_offset",
        "labels",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut names = BTreeSet::new();
    for g in seq(&committed, &["spec", "groups"]) {
        assert!(keys(g).is_subset(&group_keys), "group keys {:?}", keys(g));
        assert!(
            names.insert(s(g, &["name"]).to_string()),
            "group names are unique"
        );
        assert!(!seq(g, &["rules"]).is_empty());
        for rule in seq(g, &["rules"]) {
            assert!(!s(rule, &["expr"]).is_empty(), "{rule:?}");
            assert!(
                s(rule, &["alert"]).is_empty() != s(rule, &["record"]).is_empty(),
                "alert or record: {rule:?}"
            );
        }
    }

    // The script makes the same thing again.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prometheusrule.yaml");
    let venv_python = venv_bin("python");
    let o = run(Command::new(k8s_dir().join("gen-prometheusrule.sh"))
        .arg(&out)
        .env("PYTHON", venv_python));
    assert!(o.status.success(), "gen-prometheusrule.sh: {}", text(&o));
    assert_eq!(read_yaml(&out), committed, "{stale}");

    // promtool accepts the groups as a rules file.
    let spec = dir.path().join("spec.yml");
    std::fs::write(
        &spec,
        serde_yaml_ng::to_string(at(&committed, &["spec"])).unwrap(),
    )
    .unwrap();
    let o = run(debian_tool("promtool", "prometheus")
        .args(["check", "rules"])
        .arg(&spec));
    assert!(o.status.success(), "promtool check rules: {}", text(&o));
}

// --- Alertmanager ------------------------------------------------------------------------------------

fn alertmanager_yml() -> PathBuf {
    project_dir().join("deploy/alertmanager/alertmanager.yml")
}

fn routes_for(labels: &[&str]) -> BTreeSet<String> {
    let o = run(debian_tool("amtool", "prometheus-alertmanager")
        .args(["config", "routes", "test", "--config.file"])
        .arg(alertmanager_yml())
        .args(labels));
    assert!(
        o.status.success(),
        "amtool config routes test {labels:?}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect()
}

const INCIDENTS: &str = "mlflow-exporter-incidents";

#[test]
fn alertmanager_config_is_valid_and_routes_model_incidents_to_the_exporter() {
    let o = run(debian_tool("amtool", "prometheus-alertmanager")
        .arg("check-config")
        .arg(alertmanager_yml()));
    assert!(o.status.success(), "amtool check-config: {}", text(&o));

    let set = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // A model incident reaches the exporter and the team; nothing else reaches the exporter.
    assert_eq!(
        routes_for(&[
            "alertname=MLflowProbeDown",
            "model=churn",
            "severity=warning"
        ]),
        set(&[INCIDENTS, "ml-platform-team"])
    );
    assert_eq!(
        routes_for(&[
            "alertname=MLflowProbeDown",
            "model=churn",
            "severity=critical"
        ]),
        set(&[INCIDENTS, "ml-platform-pager"])
    );
    assert_eq!(
        routes_for(&["alertname=MLflowCostSpike", "severity=warning"]),
        set(&["ml-platform-team"])
    );
    assert_eq!(
        routes_for(&["alertname=MLflowDown", "severity=critical"]),
        set(&["ml-platform-pager"])
    );

    let am = read_yaml(&alertmanager_yml());
    let receiver = seq(&am, &["receivers"])
        .iter()
        .find(|r| s(r, &["name"]) == INCIDENTS)
        .expect("the exporter's receiver");
    let hooks = seq(receiver, &["webhook_configs"]);
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    let url = url::Url::parse(s(hook, &["url"])).expect("webhook url");
    assert_eq!(url.path(), "/api/v1/webhooks/alertmanager");
    assert_eq!(url.port(), Some(9868));
    assert_eq!(
        at(hook, &["send_resolved"]).as_bool(),
        Some(true),
        "resolutions close incidents"
    );
    let auth = at(hook, &["http_config", "authorization"]);
    assert!(matches!(s(auth, &["type"]), "" | "Bearer"));
    assert!(at(auth, &["credentials"]).is_null(), "no token in the file");
    assert!(
        s(auth, &["credentials_file"]).starts_with('/'),
        "a token file"
    );

    // The route matches on the label the exporter reads the model from.
    let eff = check_config(
        &[],
        &BTreeMap::from([(
            "MLFLOW_TRACKING_URI".to_string(),
            "http://m:5000".to_string(),
        )]),
    );
    let model_label = s(&eff, &["webhooks", "model_label"]).to_string();
    let route = seq(&am, &["route", "routes"])
        .iter()
        .find(|r| s(r, &["receiver"]) == INCIDENTS)
        .unwrap();
    assert_eq!(
        seq(route, &["matchers"]),
        [Value::from(format!("{model_label}=~\".+\""))]
    );
    assert_eq!(at(route, &["continue"]).as_bool(), Some(true));
}

// --- docker compose ----------------------------------------------------------------------------------

struct Compose {
    doc: Value,
}

/// A bind mount of a compose service: host path (resolved) and container path.
struct Bind {
    host: PathBuf,
    container: String,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: read_yaml(&compose_dir().join("docker-compose.yml")),
        }
    }

    fn service(&self, name: &str) -> &Value {
        let svc = at(&self.doc, &["services", name]);
        assert!(!svc.is_null(), "compose service {name}");
        svc
    }

    fn binds(&self, service: &str) -> Vec<Bind> {
        seq(self.service(service), &["volumes"])
            .iter()
            .filter_map(|v| {
                let v = v.as_str().expect("short volume syntax");
                let mut parts = v.split(':');
                let (src, dst) = (parts.next().unwrap(), parts.next().expect("a target"));
                (src.starts_with('.') || src.starts_with('/')).then(|| Bind {
                    host: compose_dir().join(src),
                    container: dst.to_string(),
                })
            })
            .collect()
    }

    /// A directory laid out as the service's container sees its bind mounts (symlinks).
    fn mirror(&self, service: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for b in self.binds(service) {
            let target = dir.path().join(b.container.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(b.host.canonicalize().unwrap(), &target).unwrap();
        }
        dir
    }

    fn flag(&self, service: &str, name: &str) -> String {
        let prefix = format!("--{name}=");
        seq(self.service(service), &["command"])
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix(&prefix).map(String::from))
            .unwrap_or_else(|| panic!("{service}: {prefix}"))
    }

    fn env(&self, service: &str) -> BTreeMap<String, String> {
        string_map(at(self.service(service), &["environment"]))
    }

    /// The container port published for `service`.
    fn container_ports(&self, service: &str) -> Vec<u16> {
        seq(self.service(service), &["ports"])
            .iter()
            .map(|p| {
                p.as_str()
                    .expect("port as a string")
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

#[test]
fn compose_mounts_exist_and_volumes_are_declared() {
    let c = Compose::load();
    let services = keys(at(&c.doc, &["services"]));
    for s in [
        "mlflow",
        "mlflow-exporter",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(services.contains(s), "service {s}");
    }
    let named = keys(at(&c.doc, &["volumes"]));
    for svc in &services {
        for v in seq(c.service(svc), &["volumes"]) {
            let v = v.as_str().unwrap();
            let src = v.split(':').next().unwrap();
            if src.starts_with('.') || src.starts_with('/') {
                assert!(
                    compose_dir().join(src).exists(),
                    "{svc}: {src} does not exist"
                );
            } else {
                assert!(named.contains(src), "{svc}: volume {src} is not declared");
            }
        }
    }
    // The exporter is built from this repository's Dockerfile.
    let build = at(c.service("mlflow-exporter"), &["build"]);
    let context = compose_dir().join(s(build, &["context"]));
    assert!(context.join(s(build, &["dockerfile"])).is_file());
    assert_eq!(
        context.canonicalize().unwrap(),
        project_dir().canonicalize().unwrap()
    );
    assert_eq!(
        s(c.service("mlflow-exporter"), &["image"]),
        format!("mlflow-exporter:{}", cargo_version())
    );
    assert_eq!(
        s(c.service("mlflow"), &["image"]),
        format!("ghcr.io/mlflow/mlflow:v{}", setup_mlflow_version()),
        "the MLflow the tests run against"
    );
    let (uid, gid) = dockerfile_user();
    let exporter = c.service("mlflow-exporter");
    assert_eq!(s(exporter, &["user"]), format!("{uid}:{gid}"));
    assert_eq!(at(exporter, &["read_only"]).as_bool(), Some(true));
    assert_eq!(seq(exporter, &["cap_drop"]), [Value::from("ALL")]);
}

#[test]
fn compose_prometheus_config_passes_promtool_and_loads_every_rules_file() {
    let c = Compose::load();
    let mirror = c.mirror("prometheus");
    let config = mirror
        .path()
        .join(c.flag("prometheus", "config.file").trim_start_matches('/'));
    let o = run(debian_tool("promtool", "prometheus")
        .current_dir(config.parent().unwrap())
        .args(["check", "config"])
        .arg(config.file_name().unwrap()));
    let said = text(&o);
    assert!(o.status.success(), "promtool check config: {said}");
    let n = rules_files().len();
    assert!(
        said.contains(&format!("SUCCESS: {n} rule files found")),
        "the rules of deploy/prometheus/rules are mounted and loaded ({n} files): {said}"
    );

    let prom = read_yaml(&config);
    let job = seq(&prom, &["scrape_configs"])
        .iter()
        .find(|j| s(j, &["job_name"]) == rules_job())
        .unwrap_or_else(|| panic!("a scrape job named {} (the rules select it)", rules_job()));
    assert_eq!(
        seq(job, &["static_configs", "0", "targets"]),
        [Value::from(format!(
            "mlflow-exporter:{}",
            c.container_ports("mlflow-exporter")[0]
        ))]
    );
    assert_eq!(c.container_ports("mlflow-exporter"), [9868]);
    let am_target = s(
        &prom,
        &[
            "alerting",
            "alertmanagers",
            "0",
            "static_configs",
            "0",
            "targets",
            "0",
        ],
    );
    assert_eq!(
        am_target,
        format!("alertmanager:{}", c.container_ports("alertmanager")[0])
    );
}

#[test]
fn compose_alertmanager_finds_its_config_and_the_exporters_token() {
    let c = Compose::load();
    let mirror = c.mirror("alertmanager");
    let config = mirror.path().join(
        c.flag("alertmanager", "config.file")
            .trim_start_matches('/'),
    );
    assert_eq!(
        read(&config),
        read(&alertmanager_yml()),
        "deploy/alertmanager/alertmanager.yml is the one mounted"
    );
    let o = run(debian_tool("amtool", "prometheus-alertmanager")
        .arg("check-config")
        .arg(&config));
    assert!(o.status.success(), "amtool check-config: {}", text(&o));

    let am = read_yaml(&config);
    let hook = seq(&am, &["receivers"])
        .iter()
        .find(|r| s(r, &["name"]) == INCIDENTS)
        .map(|r| &seq(r, &["webhook_configs"])[0])
        .unwrap();
    let token_file = s(hook, &["http_config", "authorization", "credentials_file"]);
    let token = read(&mirror.path().join(token_file.trim_start_matches('/')));
    assert_eq!(
        token.trim(),
        c.env("mlflow-exporter")["MLFLOW_EXPORTER_WEBHOOKS__ALERTMANAGER__TOKEN"],
        "Alertmanager sends the token the exporter expects"
    );
    let url = url::Url::parse(s(hook, &["url"])).unwrap();
    assert_eq!(
        url.host_str(),
        Some("mlflow-exporter"),
        "the compose service"
    );
    assert_eq!(url.port().unwrap(), c.container_ports("mlflow-exporter")[0]);
}

#[test]
fn compose_grafana_provisions_the_mounted_dashboards() {
    let c = Compose::load();
    let mirror = c.mirror("grafana");
    let provisioning = mirror.path().join("etc/grafana/provisioning");
    assert!(provisioning.join("dashboards").is_dir() && provisioning.join("datasources").is_dir());
    let mut providers = 0;
    for f in std::fs::read_dir(provisioning.join("dashboards")).unwrap() {
        let p = read_yaml(&f.unwrap().path());
        for prov in seq(&p, &["providers"]) {
            let path = mirror
                .path()
                .join(s(prov, &["options", "path"]).trim_start_matches('/'));
            let boards = std::fs::read_dir(&path)
                .unwrap_or_else(|_| panic!("provider path {} is not mounted", path.display()))
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("json".as_ref()))
                .count();
            assert!(boards > 0, "no dashboards at {}", path.display());
            providers += 1;
        }
    }
    assert!(providers > 0);
    for f in std::fs::read_dir(provisioning.join("datasources")).unwrap() {
        let d = read_yaml(&f.unwrap().path());
        for ds in seq(&d, &["datasources"]) {
            if s(ds, &["type"]) == "prometheus" {
                let url = url::Url::parse(s(ds, &["url"])).unwrap();
                assert_eq!(url.host_str(), Some("prometheus"), "the compose service");
                assert_eq!(url.port(), Some(c.container_ports("prometheus")[0]));
            }
        }
    }
}

#[test]
fn compose_exporter_config_passes_check_config() {
    let c = Compose::load();
    let mirror = c.mirror("mlflow-exporter");
    let args: Vec<String> = seq(c.service("mlflow-exporter"), &["command"])
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some((f, p)) if p.starts_with('/') => {
                    format!(
                        "{f}={}",
                        mirror.path().join(p.trim_start_matches('/')).display()
                    )
                }
                _ => a.to_string(),
            }
        })
        .collect();
    let env = c.env("mlflow-exporter");
    let eff = check_config(&args, &env);
    assert_eq!(
        s(&eff, &["webhooks", "alertmanager", "token"]),
        "<redacted>"
    );
    assert_eq!(
        at(&eff, &["webhooks", "alertmanager", "enabled"]).as_bool(),
        Some(true)
    );
    let uri = url::Url::parse(s(&eff, &["mlflow", "tracking_uri"])).unwrap();
    assert_eq!(uri.host_str(), Some("mlflow"), "the compose service");
    assert_eq!(
        uri.port().map(|p| p.to_string()),
        Some(c.flag("mlflow", "port"))
    );
    assert_eq!(c.container_ports("mlflow"), [uri.port().unwrap()]);
    // MLflow 3 answers only Host headers it allows.
    let allowed = c.flag("mlflow", "allowed-hosts");
    assert!(
        allowed
            .split(',')
            .any(|h| h == format!("mlflow:{}", uri.port().unwrap())),
        "{allowed}"
    );
}

// --- Dockerfile --------------------------------------------------------------------------------------

struct Dockerfile {
    /// Instructions (upper-case) and their arguments, one list per stage.
    stages: Vec<Vec<(String, String)>>,
}

fn dockerfile() -> Dockerfile {
    let src = read(&project_dir().join("Dockerfile"));
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in src.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for l in lines {
        let (instr, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = instr.to_ascii_uppercase();
        if instr == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("FROM first")
            .push((instr, args.trim().to_string()));
    }
    Dockerfile { stages }
}

fn hadolint(dockerfile: &Path, cwd: &Path) -> Vec<serde_json::Value> {
    let o = run(Command::new(venv_bin("hadolint"))
        .current_dir(cwd)
        .args(["--format", "json", "--no-color"])
        .arg(dockerfile));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("hadolint's output is not JSON ({e}): {}", text(&o)))
}

#[test]
fn dockerfile_passes_hadolint() {
    // Every rule, every level: findings are fixed or ignored in .hadolint.yaml with a reason.
    let findings = hadolint(&project_dir().join("Dockerfile"), &project_dir());
    assert!(findings.is_empty(), "hadolint: {findings:#?}");
    // And hadolint does report what it should (it is not a silent no-op).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n").unwrap();
    let codes: BTreeSet<String> = hadolint(&bad, dir.path())
        .iter()
        .map(|f| f["code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        codes.contains("DL3006") && codes.contains("DL3008"),
        "{codes:?}"
    );
}

#[test]
fn dockerfile_builds_a_small_non_root_image_without_a_shell() {
    let df = dockerfile();
    assert!(df.stages.len() >= 2, "multi-stage");
    let build = &df.stages[0];
    let last = df.stages.last().unwrap();
    let from =
        |stage: &[(String, String)]| stage[0].1.split_whitespace().next().unwrap().to_string();

    // The final image: distroless (no shell, no package manager), nothing run in it.
    assert!(
        from(last).starts_with("gcr.io/distroless/cc-"),
        "{}",
        from(last)
    );
    assert!(
        last.iter().all(|(i, _)| i != "RUN"),
        "no RUN in the final stage: it has no shell"
    );
    let (uid, _) = dockerfile_user();
    assert_ne!(uid, 0, "non-root USER");
    let expose: Vec<&str> = last
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(expose, ["9868"]);
    let entry = last
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a)
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(entry, ["/usr/local/bin/mlflow-exporter"]);
    assert!(last
        .iter()
        .any(|(i, a)| i == "COPY" && a.ends_with(" /usr/local/bin/mlflow-exporter")));
    // Same Debian release in both stages (the binary links against the final image's glibc).
    assert!(from(build).ends_with("-bookworm") && from(last).contains("debian12"));

    // The toolchain is at least the crate's rust-version.
    let tag = from(build);
    let toolchain = tag
        .strip_prefix("rust:")
        .and_then(|t| t.split('-').next())
        .expect("a rust image");
    let msrv = read(&project_dir().join("Cargo.toml"))
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .expect("rust-version");
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        parse(toolchain) >= parse(&msrv),
        "rust {toolchain} < rust-version {msrv}"
    );
}

#[test]
fn dockerfile_build_context_holds_what_cargo_needs() {
    let df = dockerfile();
    let ignored: Vec<String> = read(&project_dir().join(".dockerignore"))
        .lines()
        .map(|l| l.trim().trim_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Copy what the build stage COPYs from the context into an empty directory ...
    let ctx = tempfile::tempdir().unwrap();
    let mut copied = Vec::new();
    for (instr, args) in &df.stages[0] {
        if instr != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        let (dest, srcs) = parts.split_last().unwrap();
        for src in srcs {
            let from = project_dir().join(src);
            assert!(from.exists(), "COPY {src}: no such file");
            assert!(
                !ignored.iter().any(|i| i == src),
                "COPY {src}: .dockerignore excludes it"
            );
            let to = if dest.ends_with('/') {
                ctx.path().join(dest.trim_start_matches("./")).join(src)
            } else {
                ctx.path().join(dest.trim_start_matches("./"))
            };
            copy_tree(&from, &to);
            copied.push(src.to_string());
        }
    }
    // ... including the directory sqlx's migrate! embeds at compile time ...
    let re = regex::Regex::new(r#"migrate!\(\s*"([^"]+)"\s*\)"#).unwrap();
    let mut embedded = BTreeSet::new();
    walk(&project_dir().join("src"), &mut |p| {
        for cap in re.captures_iter(&read(p)) {
            embedded.insert(cap[1].trim_start_matches("./").to_string());
        }
    });
    for dir in &embedded {
        assert!(
            copied.contains(dir),
            "src embeds {dir}, which the Dockerfile does not copy"
        );
    }
    // ... and cargo resolves the package there, with the lock file as it is, offline (the crates
    // of this platform are in cargo's cache) ...
    let cargo = |args: &[&str]| {
        let o = run(Command::new(env!("CARGO"))
            .current_dir(ctx.path())
            .args(args)
            .env("CARGO_TARGET_DIR", ctx.path().join("target")));
        assert!(
            o.status.success(),
            "cargo {args:?} in the build context: {}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // `cargo fetch` parses the manifest as a build does (a bench file it names but the context
    // lacks fails here; `cargo metadata` would drop it silently) and resolves it with the lock file.
    let host = String::from_utf8_lossy(&run(Command::new("rustc").arg("-vV")).stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(String::from))
        .expect("rustc -vV names the host");
    cargo(&["fetch", "--locked", "--offline", "--target", &host]);
    // ... and builds the binary the image runs.
    let meta: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--no-deps",
        "--offline",
        "--format-version",
        "1",
    ]))
    .unwrap();
    let targets = meta["packages"][0]["targets"].as_array().unwrap();
    let bins: Vec<&str> = targets
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(bins, ["mlflow-exporter"]);
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, f);
        } else if p.extension() == Some("rs".as_ref()) {
            f(&p);
        }
    }
}
