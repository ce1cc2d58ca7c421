//! Turns MLflow's wire objects into snapshot records, keeping only what metrics need: the team and
//! instance-type tags, the configured extra labels, the matching rate of the rate card, the GPU count.

use regex::Regex;

use super::snapshot::*;
use crate::config::{CostSettings, ExtraLabel, Rate, Settings};
use crate::source::mlflow::model::{Experiment, KeyValue, ModelVersion, RegisteredModel, Run};

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

    fn read<'a>(&self, tags: &'a [KeyValue], params: &'a [KeyValue]) -> Option<&'a str> {
        let (list, key) = match self {
            Field::Tag(k) => (tags, k),
            Field::Param(k) => (params, k),
        };
        list.iter()
            .find(|kv| &kv.key == key)
            .map(|kv| kv.value.as_str())
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
    pub fn find(&self, tags: &[KeyValue], params: &[KeyValue]) -> u16 {
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

/// Reads the parts of MLflow objects the metrics need.
#[derive(Debug, Clone)]
pub struct Extractor {
    team_tag: String,
    instance_type_tag: String,
    extra: Vec<Field>,
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
            rates: RateCard::new(&s.cost),
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
            },
        )
    }

    pub fn run(&self, strings: &mut Interner, run: &Run) -> (RunKey, RunRecord) {
        let (info, data) = (&run.info, &run.data);
        let mut opt = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(|s| strings.intern(s));
        let team = opt(tag(&data.tags, &self.team_tag));
        let instance_type = opt(tag(&data.tags, &self.instance_type_tag));
        let user = opt(Some(info.user_id.as_str()));
        let extra = self
            .extra
            .iter()
            .map(|f| opt(f.read(&data.tags, &data.params)))
            .collect();
        let record = RunRecord {
            start_ms: info.start_time.unwrap_or(NO_TIME),
            end_ms: info.end_time.unwrap_or(NO_TIME),
            experiment: strings.intern(&info.experiment_id),
            user,
            team,
            instance_type,
            extra,
            rate: self.rates.find(&data.tags, &data.params),
            gpus_logged: gpu_count(data.metrics.iter().map(|m| m.key.as_str())),
            status: RunStatus::parse(&info.status),
            deleted: info.lifecycle_stage == "deleted",
            hashed_id: !is_hex_run_id(&info.run_id),
        };
        (run_key(&info.run_id), record)
    }

    pub fn model(&self, strings: &mut Interner, m: &RegisteredModel) -> (Sym, ModelRecord) {
        let aliases = m
            .aliases
            .iter()
            .filter_map(|a| Some((strings.intern(&a.alias), a.version.parse().ok()?)))
            .collect();
        (strings.intern(&m.name), ModelRecord { aliases })
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
                last_updated_ms: v.last_updated_timestamp.unwrap_or(NO_TIME),
            },
        ))
    }
}

fn tag<'a>(tags: &'a [KeyValue], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// Distinct GPUs among system metric keys: `system/gpu_{i}_…` or, on several nodes, `system/<node>/gpu_{i}_…`.
pub fn gpu_count<'a>(keys: impl Iterator<Item = &'a str>) -> u16 {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for key in keys {
        let Some(rest) = key.strip_prefix("system/") else {
            continue;
        };
        let (node, leaf) = rest.rsplit_once('/').unwrap_or(("", rest));
        let Some(tail) = leaf.strip_prefix("gpu_") else {
            continue;
        };
        let digits = tail.split('_').next().unwrap_or("");
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.len() == tail.len()
        {
            continue;
        }
        if !seen.contains(&(node, digits)) {
            seen.push((node, digits));
        }
    }
    u16::try_from(seen.len()).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateMatch;

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
