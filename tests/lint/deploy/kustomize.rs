//! The kustomizations of deploy/kubernetes rendered: by `kubectl kustomize` or `kustomize build`
//! where installed, else by a renderer of the few kustomize features they use; and the objects by
//! `Kind/name` with generated names' hash suffixes cut, to compare two renderings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::{Mapping, Value};

use super::{at, keys, read, read_yaml, run, s, seq, yaml, yaml_docs};

/// `kubectl kustomize` or `kustomize build`, where installed.
fn kustomize_command(dir: &Path) -> Option<Command> {
    let works = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if works("kubectl", &["kustomize", "--help"]) {
        let mut c = Command::new("kubectl");
        c.arg("kustomize").arg(dir);
        Some(c)
    } else if works("kustomize", &["version"]) {
        let mut c = Command::new("kustomize");
        c.arg("build").arg(dir);
        Some(c)
    } else {
        None
    }
}

pub fn render_with_kustomize(dir: &Path) -> Option<Vec<Value>> {
    let mut cmd = kustomize_command(dir)?;
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        "kustomize's output",
    ))
}

/// The kustomization in `dir`, rendered: kustomize itself where installed, else [`render_fallback`].
pub fn render(dir: &Path) -> Vec<Value> {
    render_with_kustomize(dir).unwrap_or_else(|| render_fallback(dir))
}

/// A renderer of what deploy/kubernetes uses of kustomize, and nothing else (anything else panics):
/// `resources` (files and directories), `configMapGenerator` with `files` (no hash suffix),
/// `namespace`, and `patches` that delete an object (`$patch: delete`) or are JSON 6902 patches of a
/// target. `fallback_renderer_agrees_with_kustomize` keeps it honest where kustomize is installed.
pub fn render_fallback(dir: &Path) -> Vec<Value> {
    let k = read_yaml(&dir.join("kustomization.yaml"));
    let known: BTreeSet<String> = [
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "configMapGenerator",
        "patches",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let unknown: Vec<_> = keys(&k).difference(&known).cloned().collect();
    assert!(
        unknown.is_empty(),
        "{}: the fallback renderer does not know {unknown:?}; extend it or render with kubectl",
        dir.display()
    );
    let mut objects = Vec::new();
    for r in seq(&k, &["resources"]) {
        let path = dir.join(r.as_str().expect("resource path"));
        if path.is_dir() {
            objects.extend(render_fallback(&path));
        } else {
            objects.extend(yaml_docs(&read(&path), &path.display().to_string()));
        }
    }
    for g in seq(&k, &["configMapGenerator"]) {
        assert_eq!(
            keys(g),
            ["files", "name"].into_iter().map(String::from).collect(),
            "configMapGenerator"
        );
        let mut data = Mapping::new();
        for f in seq(g, &["files"]) {
            let f = f.as_str().unwrap();
            let (key, file) = f
                .split_once('=')
                .unwrap_or((f.rsplit('/').next().unwrap(), f));
            data.insert(key.into(), read(&dir.join(file)).into());
        }
        let mut cm = Mapping::new();
        cm.insert("apiVersion".into(), "v1".into());
        cm.insert("kind".into(), "ConfigMap".into());
        let mut meta = Mapping::new();
        meta.insert("name".into(), at(g, &["name"]).clone());
        cm.insert("metadata".into(), meta.into());
        cm.insert("data".into(), data.into());
        objects.push(cm.into());
    }
    for p in seq(&k, &["patches"]) {
        if let Some(path) = at(p, &["path"]).as_str() {
            let patch = read_yaml(&dir.join(path));
            assert_eq!(
                s(&patch, &["$patch"]),
                "delete",
                "{path}: only $patch: delete is supported"
            );
            let before = objects.len();
            objects.retain(|o| {
                !(s(o, &["kind"]) == s(&patch, &["kind"])
                    && s(o, &["metadata", "name"]) == s(&patch, &["metadata", "name"]))
            });
            assert_eq!(objects.len() + 1, before, "{path} deletes one object");
        } else {
            let (kind, name) = (s(p, &["target", "kind"]), s(p, &["target", "name"]));
            let ops = yaml(s(p, &["patch"]), "a JSON 6902 patch");
            let mut hits = 0;
            for o in objects.iter_mut() {
                if s(o, &["kind"]) == kind && s(o, &["metadata", "name"]) == name {
                    json_patch(o, &ops);
                    hits += 1;
                }
            }
            assert_eq!(hits, 1, "patch target {kind}/{name}");
        }
    }
    if let Some(ns) = at(&k, &["namespace"]).as_str() {
        for o in objects.iter_mut() {
            o["metadata"]
                .as_mapping_mut()
                .expect("metadata")
                .insert("namespace".into(), ns.into());
        }
    }
    objects
}

/// JSON 6902 `add`, `replace` and `remove`.
fn json_patch(doc: &mut Value, ops: &Value) {
    for op in ops.as_sequence().expect("a list of operations") {
        let path: Vec<String> = s(op, &["path"])
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = path.split_last().expect("a path");
        let mut parent = &mut *doc;
        for p in parents {
            parent = match parent {
                Value::Mapping(m) => m.get_mut(p.as_str()),
                Value::Sequence(sq) => p.parse::<usize>().ok().and_then(|i| sq.get_mut(i)),
                _ => None,
            }
            .unwrap_or_else(|| panic!("patch path {path:?}: no {p}"));
        }
        let value = at(op, &["value"]).clone();
        match (s(op, &["op"]), parent) {
            ("add", Value::Sequence(sq)) if last == "-" => sq.push(value),
            ("add", Value::Sequence(sq)) => sq.insert(last.parse().unwrap(), value),
            ("add", Value::Mapping(m)) => {
                m.insert(last.as_str().into(), value);
            }
            ("replace", Value::Mapping(m)) if m.contains_key(last.as_str()) => {
                m.insert(last.as_str().into(), value);
            }
            ("replace", Value::Sequence(sq)) => sq[last.parse::<usize>().unwrap()] = value,
            ("remove", Value::Mapping(m)) => {
                m.remove(last.as_str()).expect("remove an existing key");
            }
            ("remove", Value::Sequence(sq)) => {
                sq.remove(last.parse().unwrap());
            }
            (op, _) => panic!("unsupported JSON patch operation {op} at {path:?}"),
        }
    }
}

/// Objects by `Kind/name`, with the hash suffix of generated ConfigMaps cut from their names and
/// from every reference to them.
pub fn by_kind_name(objects: &[Value]) -> BTreeMap<String, Value> {
    let mut renames = HashMap::new();
    for o in objects {
        let name = s(o, &["metadata", "name"]);
        if s(o, &["kind"]) == "ConfigMap" {
            if let Some((base, hash)) = name.rsplit_once('-') {
                if hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()) {
                    renames.insert(name.to_string(), base.to_string());
                }
            }
        }
    }
    fn rename(v: &mut Value, renames: &HashMap<String, String>) {
        match v {
            Value::String(s) => {
                if let Some(n) = renames.get(s.as_str()) {
                    *s = n.clone();
                }
            }
            Value::Sequence(sq) => sq.iter_mut().for_each(|v| rename(v, renames)),
            Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| rename(v, renames)),
            _ => {}
        }
    }
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            rename(&mut o, &renames);
            (
                format!("{}/{}", s(&o, &["kind"]), s(&o, &["metadata", "name"])),
                o,
            )
        })
        .collect()
}
