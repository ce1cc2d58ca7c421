//! What the derived metrics look like: `metrics.*` (buckets, windows, features, quality metrics, extra
//! labels, the series budget).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{bad, check_buckets, humantime_vec, ConfigError};

/// What the derived metrics look like.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Buckets of `mlflow_run_duration_seconds`, in seconds.
    pub run_duration_buckets: Vec<f64>,
    /// Windows of the active, new and churned user gauges.
    #[serde(with = "humantime_vec")]
    pub user_windows: Vec<Duration>,
    /// Run tag (then experiment tag) that names a run's team.
    pub team_tag: String,
    /// At most this many values per user-fed label; the rest become `__other__`. A value that got a
    /// series of its own keeps it.
    pub max_label_values: usize,
    /// Samples one scrape may hold: new label combinations of the counters that do not fit are
    /// folded into `__other__` (never a family dropped).
    pub max_series: usize,
    /// Extra labels on `mlflow_runs_ended_total` and `mlflow_run_duration_seconds`, from a run tag or param.
    pub extra_labels: Vec<ExtraLabel>,
    /// Platform features whose users `mlflow_feature_users` counts; each a predicate on a run.
    pub features: Vec<Feature>,
    /// Model-quality metric keys and which way is better, for `mlflow_experiment_best_metric`.
    pub quality_metrics: Vec<QualityMetric>,
    /// Buckets of `mlflow_user_time_to_first_model_seconds`, in seconds.
    pub time_to_first_model_buckets: Vec<f64>,
    /// Buckets of `mlflow_run_gpu_utilization_ratio`.
    pub gpu_utilization_buckets: Vec<f64>,
    /// Buckets of `mlflow_trace_duration_seconds`, in seconds.
    pub trace_duration_buckets: Vec<f64>,
    /// The p99 trace duration the GenAI apps should stay within: exported as
    /// `mlflow_trace_latency_budget_seconds`, which `MLflowGenAILatencyHigh` compares with.
    #[serde(with = "humantime_serde")]
    pub trace_latency_budget: Duration,
    /// Buckets of `mlflow_trace_feedback_score` (numeric feedback: a 0–1 judge score or 1–5 stars).
    pub feedback_score_buckets: Vec<f64>,
}

/// A platform feature, used by a run when its one predicate holds, e.g. `{name: git, tag:
/// mlflow.source.git.commit}`. Set exactly one of `tag` (present, or equal to `value`),
/// `metric_prefix`, `inputs: true` (the run logged dataset inputs) or `registered: true` (a model
/// version was created from the run).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The `feature` label value.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inputs: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registered: bool,
    /// MLflow 3: traces were made in the run (a trace's `mlflow.sourceRun` names it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub traces: bool,
}

impl Feature {
    fn tag(name: &str, tag: &str) -> Feature {
        Feature {
            name: name.into(),
            tag: Some(tag.into()),
            ..Feature::default()
        }
    }
}

/// Which way a quality metric improves.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Max,
    Min,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QualityMetric {
    pub key: String,
    pub goal: Goal,
}

/// At most this many features: a run's feature set is a 32-bit mask.
pub const MAX_FEATURES: usize = 32;

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            run_duration_buckets: vec![
                60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
            ],
            user_windows: vec![
                Duration::from_secs(86400),
                Duration::from_secs(7 * 86400),
                Duration::from_secs(30 * 86400),
            ],
            team_tag: "team".into(),
            max_label_values: 200,
            max_series: 10_000,
            extra_labels: Vec::new(),
            features: vec![
                Feature {
                    name: "registry".into(),
                    registered: true,
                    ..Feature::default()
                },
                Feature {
                    name: "system_metrics".into(),
                    metric_prefix: Some("system/".into()),
                    ..Feature::default()
                },
                Feature::tag("autolog", "mlflow.autologging"),
                Feature::tag("git", "mlflow.source.git.commit"),
                Feature::tag("nested_runs", "mlflow.parentRunId"),
                Feature {
                    name: "datasets".into(),
                    inputs: true,
                    ..Feature::default()
                },
                // MLflow 3 tags a run that loaded a prompt of its registry.
                Feature::tag("prompts", "mlflow.linkedPrompts"),
                Feature {
                    name: "tracing".into(),
                    traces: true,
                    ..Feature::default()
                },
                // MLflow 3's GenAI evaluation (`mlflow.genai.evaluate`) tags its runs so.
                Feature {
                    name: "evaluation".into(),
                    tag: Some("mlflow.runType".into()),
                    value: Some("genai_evaluate".into()),
                    ..Feature::default()
                },
            ],
            quality_metrics: [
                ("accuracy", Goal::Max),
                ("auc", Goal::Max),
                ("f1", Goal::Max),
                ("rmse", Goal::Min),
                ("loss", Goal::Min),
            ]
            .into_iter()
            .map(|(key, goal)| QualityMetric {
                key: key.into(),
                goal,
            })
            .collect(),
            time_to_first_model_buckets: [
                1.0, 6.0, 24.0, 72.0, 168.0, 336.0, 720.0, 1440.0, 2160.0, 4320.0,
            ]
            .iter()
            .map(|hours| hours * 3600.0)
            .collect(),
            gpu_utilization_buckets: (1..=10).map(|i| f64::from(i) / 10.0).collect(),
            // 10 ms to 5 min: a chat turn to a long agent run.
            trace_duration_buckets: vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ],
            trace_latency_budget: Duration::from_secs(10),
            feedback_score_buckets: vec![0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0],
        }
    }
}

/// A label taken from each run, e.g. `{name: estimator, param: estimator_class}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtraLabel {
    /// Label name on the exported series.
    pub name: String,
    /// Run tag to read it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Run param to read it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl MetricsSettings {
    /// Buckets, features, quality metrics, windows, limits and extra labels are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, b) in [
            ("metrics.run_duration_buckets", &self.run_duration_buckets),
            (
                "metrics.time_to_first_model_buckets",
                &self.time_to_first_model_buckets,
            ),
            (
                "metrics.gpu_utilization_buckets",
                &self.gpu_utilization_buckets,
            ),
            (
                "metrics.trace_duration_buckets",
                &self.trace_duration_buckets,
            ),
            (
                "metrics.feedback_score_buckets",
                &self.feedback_score_buckets,
            ),
        ] {
            check_buckets(key, b)?;
        }
        let features = &self.features;
        if features.len() > MAX_FEATURES {
            return bad(
                "metrics.features",
                format!("at most {MAX_FEATURES} features"),
            );
        }
        for (i, f) in features.iter().enumerate() {
            let key = format!("metrics.features[{i}]");
            if f.name.is_empty() || features[..i].iter().any(|o| o.name == f.name) {
                return bad(&key, format!("name {:?} is empty or appears twice", f.name));
            }
            let kinds = [
                f.tag.is_some(),
                f.metric_prefix.is_some(),
                f.inputs,
                f.registered,
                f.traces,
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return bad(
                    &key,
                    "set exactly one of tag, metric_prefix, inputs: true, registered: true or traces: true"
                        .into(),
                );
            }
            if f.value.is_some() && f.tag.is_none() {
                return bad(&key, "value only goes with tag".into());
            }
        }
        for (i, q) in self.quality_metrics.iter().enumerate() {
            if q.key.is_empty() || self.quality_metrics[..i].iter().any(|o| o.key == q.key) {
                return bad(
                    &format!("metrics.quality_metrics[{i}]"),
                    format!("key {:?} is empty or appears twice", q.key),
                );
            }
        }
        if self.user_windows.is_empty() || self.user_windows.iter().any(|w| w.is_zero()) {
            return bad(
                "metrics.user_windows",
                "must be a non-empty list of non-zero durations such as 1d".into(),
            );
        }
        if self.max_label_values == 0 {
            return bad("metrics.max_label_values", "must be at least 1".into());
        }
        if self.max_series < 1000 {
            return bad(
                "metrics.max_series",
                "must be at least 1000: the exporter's own metrics and one series of each family need that many".into(),
            );
        }
        if self.team_tag.is_empty() {
            return bad("metrics.team_tag", "must not be empty".into());
        }
        let reserved = [
            "experiment",
            "status",
            "team",
            "instance_type",
            "le",
            "job",
            "instance",
        ];
        for (i, l) in self.extra_labels.iter().enumerate() {
            let key = format!("metrics.extra_labels[{i}]");
            if !is_label_name(&l.name) || l.name.starts_with("__") {
                return bad(
                    &key,
                    format!("{:?} is not a valid Prometheus label name", l.name),
                );
            }
            if reserved.contains(&l.name.as_str()) {
                return bad(&key, format!("label name {:?} is already used", l.name));
            }
            if self.extra_labels[..i].iter().any(|o| o.name == l.name) {
                return bad(&key, format!("label name {:?} appears twice", l.name));
            }
            if l.tag.is_some() == l.param.is_some() {
                return bad(&key, "set exactly one of tag or param".into());
            }
        }
        Ok(())
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
