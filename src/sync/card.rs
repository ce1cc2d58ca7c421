//! The settings that are decided per run, compiled once: the rate card (`cost.rates`, first match
//! wins; `cost.token_rates` by model) and the feature table (`metrics.features`). The sync records
//! a run's rate as an index into this card and its features as bits of this table; the tally and
//! the derivation read them back through the same [`Card`], shared, so an index is never read
//! against another card.

use std::sync::Arc;

use hashbrown::HashMap;
use regex::Regex;

use super::extract::tag;
use super::snapshot::NO_RATE;
use crate::config::{CostSettings, Feature, Rate, Settings};
use crate::source::mlflow::model::{Pair, Run};

/// The rate card and the feature table.
#[derive(Debug)]
pub struct Card {
    pub rates: RateCard,
    /// `cost.token_rates`: by model, input and output price per million tokens.
    pub token_rates: HashMap<Box<str>, (f64, f64)>,
    pub features: FeatureTable,
}

impl Card {
    pub fn new(s: &Settings) -> Arc<Card> {
        Arc::new(Card {
            rates: RateCard::new(&s.cost),
            token_rates: s
                .cost
                .token_rates
                .iter()
                .map(|r| (r.model.as_str().into(), (r.input, r.output)))
                .collect(),
            features: FeatureTable::new(&s.metrics.features),
        })
    }
}

/// Where a rate or label reads its value.
#[derive(Debug, Clone)]
pub(crate) enum Field {
    Tag(String),
    Param(String),
}

impl Field {
    pub(crate) fn of(tag: &Option<String>, param: &Option<String>) -> Field {
        match (tag, param) {
            (Some(t), _) => Field::Tag(t.clone()),
            (None, Some(p)) => Field::Param(p.clone()),
            // Settings::validate refuses this; an empty tag name matches nothing.
            (None, None) => Field::Tag(String::new()),
        }
    }

    pub(crate) fn read<'a, P: Pair>(&self, tags: &'a [P], params: &'a [P]) -> Option<&'a str> {
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

/// The features, in the order of `metrics.features`: bit `i` is feature `i`.
#[derive(Debug)]
pub struct FeatureTable {
    predicates: Vec<Predicate>,
    /// Bits of the features decided by the registry (a version was created from the run).
    pub registered: u32,
    /// Bits of the features decided by the traces counted (`traces: true`).
    pub traced: u32,
}

impl FeatureTable {
    fn new(features: &[Feature]) -> FeatureTable {
        let predicates: Vec<Predicate> = features.iter().map(Predicate::new).collect();
        let bits = |want: fn(&Predicate) -> bool| {
            predicates
                .iter()
                .enumerate()
                .filter(|(_, p)| want(p))
                .fold(0, |bits, (i, _)| bits | 1 << i)
        };
        FeatureTable {
            registered: bits(|p| matches!(p, Predicate::Registered)),
            traced: bits(|p| matches!(p, Predicate::Traces)),
            predicates,
        }
    }

    /// The bit set of the features a run uses (registry and traces aside).
    pub fn of(&self, run: &Run) -> u32 {
        self.predicates
            .iter()
            .enumerate()
            .filter(|(_, p)| p.holds(run))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }
}

/// A feature's predicate on a run.
#[derive(Debug, Clone)]
pub(crate) enum Predicate {
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
