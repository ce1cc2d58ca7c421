//! Turns MLflow's wire objects into snapshot records, keeping only what metrics need: the team and
//! instance-type tags, the configured extra labels, the matching rate of the rate card, the GPU count
//! and utilization, the features a run uses and its quality metrics.

use regex::Regex;

use super::snapshot::*;
use crate::config::{CostSettings, ExtraLabel, Feature, Rate, Settings};
use crate::source::mlflow::model::{Experiment, ModelVersion, Pair, RegisteredModel, Run};

/// Where a rate or label reads its value.
#[derive(Debug, Clone)]
enum Field {
    Tag(String),
    Param(String),
}

impl Field {
    fn of(tag: &Option<String>, param: &Option<String>) -> Field {
        match (tag, param) {
            (Some(t), _) => Field::Tag(t.clone()),
            (None, Some(p)) => Field::Param(p.clone()),
            // Settings::validate refuses this; an empty tag name matches nothing.
            (None, None) => Field::Tag(String::new()),
        }
    }

    fn read<'a, P: Pair>(&self, tags: &'a [P], params: &'a [P]) -> Option<&'a str> {
        match self {
            Field::Tag(k) => tag(tags, k),
            Field::Param(k) => tag(params, k),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct CompiledRate {
    field: Field,
    matcher: Matcher,
    hourly_rate: f64,
    gpus: Option<u32>,
}

/// The rate card, compiled: first match wins.
#[derive(Debug, Clone)]
pub struct RateCard {
    rates: Vec<CompiledRate>,
    pub default_hourly_rate: f64,
}

impl RateCard {
    pub fn new(cost: &CostSettings) -> RateCard {
        let rates = cost
            .rates
            .iter()
            .take(usize::from(NO_RATE))
            .map(|r: &Rate| CompiledRate {
                field: Field::of(&r.matcher.tag, &r.matcher.param),
                matcher: match (&r.matcher.value, &r.matcher.regex) {
                    (_, Some(re)) => Matcher::Regex(
                        // Settings::validate has compiled it once already.
                        Regex::new(re).unwrap_or_else(|_| Regex::new("$^").expect("valid")),
                    ),
                    (v, None) => Matcher::Exact(v.clone().unwrap_or_default()),
                },
                hourly_rate: r.hourly_rate,
                gpus: r.gpus,
            })
            .collect();
        RateCard {
            rates,
            default_hourly_rate: cost.default_hourly_rate,
        }
    }

    /// Index of the first rate matching the run's tags and params, or [`NO_RATE`].
    pub fn find<P: Pair>(&self, tags: &[P], params: &[P]) -> u16 {
        self.rates
            .iter()
            .position(|r| {
                r.field
                    .read(tags, params)
                    .is_some_and(|v| match &r.matcher {
                        Matcher::Exact(want) => v == want,
                        Matcher::Regex(re) => re.is_match(v),
                    })
            })
            .map_or(NO_RATE, |i| i as u16)
    }

    pub fn hourly_rate(&self, rate: u16) -> f64 {
        self.rates
            .get(usize::from(rate))
            .map_or(self.default_hourly_rate, |r| r.hourly_rate)
    }

    /// GPUs of a run: the rate's own count when it has one, else what the run's system metrics show.
    pub fn gpus(&self, rate: u16, gpus_logged: u16) -> u32 {
        self.rates
            .get(usize::from(rate))
            .and_then(|r| r.gpus)
            .unwrap_or(u32::from(gpus_logged))
    }

    /// Number of rates, for iterating by index.
    pub fn len(&self) -> usize {
        self.rates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }
}

/// A feature's predicate on a run.
#[derive(Debug, Clone)]
enum Predicate {
    Tag {
        key: String,
        value: Option<String>,
    },
    MetricPrefix(String),
    Inputs,
    /// Decided from the registry when metrics are derived, not from the run.
    Registered,
    /// Decided from the traces counted (the tally's runs named by a trace), not from the run.
    Traces,
}

impl Predicate {
    fn new(f: &Feature) -> Predicate {
        match (&f.tag, &f.metric_prefix) {
            (Some(key), _) => Predicate::Tag {
                key: key.clone(),
                value: f.value.clone(),
            },
            (None, Some(p)) => Predicate::MetricPrefix(p.clone()),
            _ if f.inputs => Predicate::Inputs,
            _ if f.traces => Predicate::Traces,
            _ => Predicate::Registered,
        }
    }

    fn holds(&self, run: &Run) -> bool {
        match self {
            Predicate::Tag { key, value } => tag(&run.data.tags, key)
                .is_some_and(|v| value.as_ref().is_none_or(|want| want == v)),
            Predicate::MetricPrefix(p) => run.data.metrics.iter().any(|m| {
                m.key.as_bytes().first() == p.as_bytes().first() && m.key.starts_with(p.as_str())
            }),
            Predicate::Inputs => !run.inputs.dataset_inputs.is_empty(),
            Predicate::Registered | Predicate::Traces => false,
        }
    }
}

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
    features: Vec<Predicate>,
    quality_keys: Vec<String>,
    pub rates: RateCard,
}

impl Extractor {
    pub fn new(s: &Settings) -> Extractor {
        Extractor {
            team_tag: s.metrics.team_tag.clone(),
            instance_type_tag: s.cost.instance_type_tag.clone(),
            extra: s
                .metrics
                .extra_labels
                .iter()
                .map(|l: &ExtraLabel| Field::of(&l.tag, &l.param))
                .collect(),
            features: s.metrics.features.iter().map(Predicate::new).collect(),
            quality_keys: s
                .metrics
                .quality_metrics
                .iter()
                .map(|q| q.key.clone())
                .collect(),
            rates: RateCard::new(&s.cost),
        }
    }

    /// The bit set of the features a run uses (registry aside).
    fn features(&self, run: &Run) -> u32 {
        self.features
            .iter()
            .enumerate()
            .filter(|(_, p)| p.holds(run))
            .fold(0, |bits, (i, _)| bits | 1 << i)
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
            features: self.features(run),
            rate: self.rates.find(&data.tags, &data.params),
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

fn tag<'a, P: Pair>(tags: &'a [P], key: &str) -> Option<&'a str> {
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
    use crate::config::RateMatch;
    use crate::source::mlflow::model::KeyValue;

    fn kv(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
        pairs
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

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
        let ex = Extractor::new(&s);
        // Defaults: registry (bit 0, never from the run), system_metrics 1, autolog 2, git 3, nested 4,
        // datasets 5, prompts 6, tracing 7 (never from the run), evaluation 8; the one pushed
        // here is 9.
        assert_eq!(ex.features(&run_with(&[], &[], 0)), 0);
        assert_eq!(
            ex.features(&run_with(&[], &["system/cpu_utilization_percentage"], 0)),
            1 << 1
        );
        assert_eq!(
            ex.features(&run_with(&[], &["systems/x", "my/system/y"], 0)),
            0
        );
        assert_eq!(
            ex.features(&run_with(&[("mlflow.autologging", "pytorch")], &[], 0)),
            1 << 2
        );
        assert_eq!(
            ex.features(&run_with(&[("mlflow.autologging", "sklearn")], &[], 0)),
            1 << 2 | 1 << 9
        );
        assert_eq!(
            ex.features(&run_with(
                &[
                    ("mlflow.source.git.commit", "abc"),
                    ("mlflow.parentRunId", "p")
                ],
                &[],
                0
            )),
            1 << 3 | 1 << 4
        );
        assert_eq!(ex.features(&run_with(&[], &[], 2)), 1 << 5);
        let linked = [(
            "mlflow.linkedPrompts",
            r#"[{"name": "qa", "version": "1"}]"#,
        )];
        assert_eq!(ex.features(&run_with(&linked, &[], 0)), 1 << 6);
        let evaluation = [("mlflow.runType", "genai_evaluate")];
        assert_eq!(ex.features(&run_with(&evaluation, &[], 0)), 1 << 8);
        let other = [("mlflow.runType", "test")];
        assert_eq!(ex.features(&run_with(&other, &[], 0)), 0);
    }

    #[test]
    fn quality_values_follow_the_configured_keys() {
        let ex = Extractor::new(&Settings::default());
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

    #[test]
    fn first_matching_rate_wins_on_tags_or_params() {
        let rate = |tag: Option<&str>,
                    param: Option<&str>,
                    value: Option<&str>,
                    regex: Option<&str>,
                    r: f64,
                    gpus| Rate {
            matcher: RateMatch {
                tag: tag.map(Into::into),
                param: param.map(Into::into),
                value: value.map(Into::into),
                regex: regex.map(Into::into),
            },
            hourly_rate: r,
            gpus,
        };
        let card = RateCard::new(&CostSettings {
            default_hourly_rate: 0.1,
            rates: vec![
                rate(
                    Some("instance_type"),
                    None,
                    Some("g5.xlarge"),
                    None,
                    1.006,
                    Some(1),
                ),
                rate(None, Some("node"), None, Some("^p4d\\."), 32.77, Some(8)),
                rate(Some("instance_type"), None, None, Some("^g5\\."), 2.0, None),
            ],
            ..CostSettings::default()
        });
        let none = kv(&[]);
        assert_eq!(card.find(&kv(&[("instance_type", "g5.xlarge")]), &none), 0);
        assert_eq!(card.find(&kv(&[("instance_type", "g5.2xlarge")]), &none), 2);
        assert_eq!(card.find(&none, &kv(&[("node", "p4d.24xlarge")])), 1);
        // A tag of the param's name does not match a param rule.
        assert_eq!(card.find(&kv(&[("node", "p4d.24xlarge")]), &none), NO_RATE);
        assert_eq!(card.hourly_rate(0), 1.006);
        assert_eq!(card.hourly_rate(NO_RATE), 0.1);
        assert_eq!(card.gpus(1, 2), 8);
        // No GPU count in the rate: the run's own system metrics decide.
        assert_eq!(card.gpus(2, 2), 2);
        assert_eq!(card.gpus(NO_RATE, 3), 3);
    }
}
