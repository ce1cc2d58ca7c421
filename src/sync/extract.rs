//! Turns MLflow's wire objects into snapshot records, keeping only what metrics need: the team and
//! instance-type tags, the configured extra labels, the matching rate of the rate card, the GPU count
//! and utilization, the features a run uses and its quality metrics.

use std::sync::Arc;

use super::card::{Card, Field};
use super::snapshot::*;
use crate::config::{ExtraLabel, Settings};
use crate::source::mlflow::model::{Experiment, ModelVersion, Pair, RegisteredModel, Run};

/// A page of runs as records, named by a table of the page's own strings.
#[derive(Debug)]
pub struct PageRecords {
    pub strings: Interner,
    pub runs: Vec<(RunKey, RunRecord)>,
}

impl PageRecords {
    /// Moves the records into `snapshot` tables, renamed to its strings; returns how many.
    pub fn merge_into(
        self,
        strings: &mut Interner,
        out: &mut impl Extend<(RunKey, RunRecord)>,
    ) -> usize {
        let remap = strings.absorb(&self.strings);
        let n = self.runs.len();
        out.extend(self.runs.into_iter().map(|(k, mut r)| {
            remap.run(&mut r);
            (k, r)
        }));
        n
    }
}

/// Reads the parts of MLflow objects the metrics need.
#[derive(Debug, Clone)]
pub struct Extractor {
    team_tag: String,
    instance_type_tag: String,
    extra: Vec<Field>,
    quality_keys: Vec<String>,
    /// The rate card and feature table, shared with the tally and the derivation: the rate
    /// index and feature bits recorded here are read back through the same card.
    pub card: Arc<Card>,
}

impl Extractor {
    pub fn new(s: &Settings, card: Arc<Card>) -> Extractor {
        Extractor {
            team_tag: s.metrics.team_tag.clone(),
            instance_type_tag: s.cost.instance_type_tag.clone(),
            extra: s
                .metrics
                .extra_labels
                .iter()
                .map(|l: &ExtraLabel| Field::of(&l.tag, &l.param))
                .collect(),
            quality_keys: s
                .metrics
                .quality_metrics
                .iter()
                .map(|q| q.key.clone())
                .collect(),
            card,
        }
    }

    /// Latest values of the quality keys, or nothing when the run logged none of them.
    fn quality(&self, run: &Run) -> Box<[f64]> {
        let values: Vec<f64> = self
            .quality_keys
            .iter()
            .map(|k| {
                run.data
                    .metrics
                    .iter()
                    .find(|m| key_eq(&m.key, k))
                    .map_or(f64::NAN, |m| m.value)
            })
            .collect();
        if values.iter().all(|v| v.is_nan()) {
            Box::new([])
        } else {
            values.into_boxed_slice()
        }
    }

    pub fn experiment(&self, strings: &mut Interner, e: &Experiment) -> (Sym, ExperimentRecord) {
        let team = tag(&e.tags, &self.team_tag).map(|t| strings.intern(t));
        (
            strings.intern(&e.experiment_id),
            ExperimentRecord {
                name: strings.intern(&e.name),
                deleted: e.lifecycle_stage == "deleted",
                team,
                workspace: None,
            },
        )
    }

    pub fn run(&self, strings: &mut Interner, run: &Run) -> (RunKey, RunRecord) {
        let (info, data) = (&run.info, &run.data);
        let mut opt = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(|s| strings.intern(s));
        let team = opt(tag(&data.tags, &self.team_tag));
        let instance_type = opt(tag(&data.tags, &self.instance_type_tag));
        let user = opt(Some(&info.user_id));
        let extra: Vec<Option<Sym>> = self
            .extra
            .iter()
            .map(|f| opt(f.read(&data.tags, &data.params)))
            .collect();
        let extra = strings.intern_combo(&extra);
        let record = RunRecord {
            start_ms: info.start_time.unwrap_or(NO_TIME),
            end_ms: info.end_time.unwrap_or(NO_TIME),
            experiment: strings.intern(&info.experiment_id),
            user,
            team,
            instance_type,
            extra,
            quality: self.quality(run),
            gpu_util_pct: gpu_utilization(data.metrics.iter().map(|m| (&*m.key, m.value))),
            features: self.card.features.of(run),
            rate: self.card.rates.find(&data.tags, &data.params),
            gpus_logged: gpu_count(data.metrics.iter().map(|m| &*m.key)),
            status: RunStatus::parse(&info.status),
            deleted: info.lifecycle_stage == "deleted",
            hashed_id: !is_hex_run_id(&info.run_id),
            counted_ms: 0,
            counted: 0,
        };
        (run_key(&info.run_id), record)
    }

    /// The records of a page of runs, with their own string table (made off the sync task, then
    /// absorbed into the snapshot's).
    pub fn page(&self, runs: &[Run]) -> PageRecords {
        let mut strings = Interner::default();
        let runs = runs.iter().map(|r| self.run(&mut strings, r)).collect();
        PageRecords { strings, runs }
    }

    pub fn model(&self, strings: &mut Interner, m: &RegisteredModel) -> (Sym, ModelRecord) {
        let aliases = m
            .aliases
            .iter()
            .filter_map(|a| Some((strings.intern(&a.alias), a.version.parse().ok()?)))
            .collect();
        let team = tag(&m.tags, &self.team_tag).map(|t| strings.intern(t));
        (
            strings.intern(&m.name),
            ModelRecord {
                aliases,
                team,
                workspace: None,
            },
        )
    }

    /// `None` for a version whose number is not an integer (MLflow always numbers them).
    pub fn version(
        &self,
        strings: &mut Interner,
        v: &ModelVersion,
    ) -> Option<((Sym, u32), VersionRecord)> {
        let number = v.version.parse().ok()?;
        let stage = if v.current_stage.is_empty() {
            "None"
        } else {
            &v.current_stage
        };
        Some((
            (strings.intern(&v.name), number),
            VersionRecord {
                stage: strings.intern(stage),
                status: strings.intern(if v.status.is_empty() {
                    "READY"
                } else {
                    &v.status
                }),
                created_ms: v.creation_timestamp.unwrap_or(NO_TIME),
                last_updated_ms: v.last_updated_timestamp.unwrap_or(NO_TIME),
                run: (!v.run_id.is_empty()).then(|| run_key(&v.run_id)),
                logged_model: v.logged_model().map(Box::from),
            },
        ))
    }
}

pub(super) fn tag<'a, P: Pair>(tags: &'a [P], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|kv| key_eq(kv.key(), key))
        .map(|kv| kv.value())
}

/// String equality that rejects most different keys of equal length ("accuracy" and "val_loss",
/// "estimator" and "optimizer") on their first byte, before calling `memcmp`: the extractor
/// compares some 50 keys per run, and the call was a fifth of its time.
#[inline]
fn key_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// Splits a system metric key `system/gpu_{i}_{what}` (or `system/<node>/gpu_{i}_{what}`) into
/// `((node, i), what)`.
fn gpu_key(key: &str) -> Option<((&str, &str), &str)> {
    // The first byte first: most keys are a model's own metrics, and this runs twice per key.
    if key.as_bytes().first() != Some(&b's') {
        return None;
    }
    let rest = key.strip_prefix("system/")?;
    let (node, leaf) = rest.rsplit_once('/').unwrap_or(("", rest));
    let (index, what) = leaf.strip_prefix("gpu_")?.split_once('_')?;
    (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .then_some(((node, index), what))
}

/// Distinct GPUs among a run's system metric keys.
pub fn gpu_count<'a>(keys: impl Iterator<Item = &'a str>) -> u16 {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (gpu, _) in keys.filter_map(gpu_key) {
        if !seen.contains(&gpu) {
            seen.push(gpu);
        }
    }
    u16::try_from(seen.len()).unwrap_or(u16::MAX)
}

/// Mean of the latest `gpu_{i}_utilization_percentage` values, in percent; NaN when there are none.
pub fn gpu_utilization<'a>(metrics: impl Iterator<Item = (&'a str, f64)>) -> f64 {
    let (sum, n) = metrics
        .filter(|(k, v)| {
            v.is_finite() && gpu_key(k).is_some_and(|(_, what)| what == "utilization_percentage")
        })
        .fold((0.0, 0u32), |(s, n), (_, v)| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / f64::from(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Feature;

    #[test]
    fn gpus_are_counted_per_node_and_index() {
        let keys = [
            "system/gpu_0_utilization_percentage",
            "system/gpu_0_memory_usage_megabytes",
            "system/gpu_1_utilization_percentage",
            "system/cpu_utilization_percentage",
            "gpu_7_utilization_percentage",
            "system/gpu_utilization",
        ];
        assert_eq!(gpu_count(keys.into_iter()), 2);
        let multi = [
            "system/node-a/gpu_0_power_usage_watts",
            "system/node-b/gpu_0_power_usage_watts",
            "system/node-b/gpu_1_power_usage_watts",
        ];
        assert_eq!(gpu_count(multi.into_iter()), 3);
    }

    #[test]
    fn gpu_utilization_is_the_mean_of_utilization_keys() {
        let m = [
            ("system/gpu_0_utilization_percentage", 80.0),
            ("system/gpu_1_utilization_percentage", 60.0),
            ("system/gpu_1_memory_usage_megabytes", 9000.0),
            ("system/cpu_utilization_percentage", 5.0),
            ("system/gpu_2_utilization_percentage", f64::NAN),
        ];
        assert_eq!(gpu_utilization(m.into_iter()), 70.0);
        assert!(gpu_utilization([("accuracy", 0.9)].into_iter()).is_nan());
    }

    /// A run as MLflow would list it (runs borrow from the text they are decoded from: leaked here).
    fn run_with(tags: &[(&str, &str)], metrics: &[&str], inputs: usize) -> Run<'static> {
        let json = serde_json::json!({
            "info": {"run_id": "0123456789abcdef0123456789abcdef", "experiment_id": "1"},
            "data": {
                "tags": tags.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
                "metrics": metrics.iter().map(|k| serde_json::json!({"key": k, "value": 0.5})).collect::<Vec<_>>(),
            },
            "inputs": {"dataset_inputs": (0..inputs).map(|_| serde_json::json!({"dataset": {"name": "d"}})).collect::<Vec<_>>()},
        });
        serde_json::from_str(Box::leak(json.to_string().into_boxed_str())).unwrap()
    }

    #[test]
    fn feature_predicates() {
        let mut s = Settings::default();
        s.metrics.features.push(Feature {
            name: "sklearn_autolog".into(),
            tag: Some("mlflow.autologging".into()),
            value: Some("sklearn".into()),
            ..Feature::default()
        });
        let ex = Extractor::new(&s, Card::new(&s));
        // Defaults: registry (bit 0, never from the run), system_metrics 1, autolog 2, git 3, nested 4,
        // datasets 5, prompts 6, tracing 7 (never from the run), evaluation 8; the one pushed
        // here is 9.
        assert_eq!(ex.card.features.of(&run_with(&[], &[], 0)), 0);
        assert_eq!(
            ex.card
                .features
                .of(&run_with(&[], &["system/cpu_utilization_percentage"], 0)),
            1 << 1
        );
        assert_eq!(
            ex.card
                .features
                .of(&run_with(&[], &["systems/x", "my/system/y"], 0)),
            0
        );
        assert_eq!(
            ex.card
                .features
                .of(&run_with(&[("mlflow.autologging", "pytorch")], &[], 0)),
            1 << 2
        );
        assert_eq!(
            ex.card
                .features
                .of(&run_with(&[("mlflow.autologging", "sklearn")], &[], 0)),
            1 << 2 | 1 << 9
        );
        assert_eq!(
            ex.card.features.of(&run_with(
                &[
                    ("mlflow.source.git.commit", "abc"),
                    ("mlflow.parentRunId", "p")
                ],
                &[],
                0
            )),
            1 << 3 | 1 << 4
        );
        assert_eq!(ex.card.features.of(&run_with(&[], &[], 2)), 1 << 5);
        let linked = [(
            "mlflow.linkedPrompts",
            r#"[{"name": "qa", "version": "1"}]"#,
        )];
        assert_eq!(ex.card.features.of(&run_with(&linked, &[], 0)), 1 << 6);
        let evaluation = [("mlflow.runType", "genai_evaluate")];
        assert_eq!(ex.card.features.of(&run_with(&evaluation, &[], 0)), 1 << 8);
        let other = [("mlflow.runType", "test")];
        assert_eq!(ex.card.features.of(&run_with(&other, &[], 0)), 0);
    }

    #[test]
    fn quality_values_follow_the_configured_keys() {
        let s = Settings::default();
        let ex = Extractor::new(&s, Card::new(&s));
        let mut run = run_with(&[], &["f1"], 0);
        run.data.metrics[0].value = 0.8;
        // accuracy, auc, f1, rmse, loss
        let q = ex.quality(&run);
        assert_eq!(q.len(), 5);
        assert!(q[0].is_nan() && q[1].is_nan() && q[3].is_nan() && q[4].is_nan());
        assert_eq!(q[2], 0.8);
        // None of the keys: nothing kept, no allocation.
        assert!(ex.quality(&run_with(&[], &["other"], 0)).is_empty());
    }
}
