//! Each of the tally's series as a row's JSON, and back: counts, sums and histograms (with the
//! buckets they were counted on, so that reconfigured buckets keep every observation).

use serde_json::{json, Value};

use crate::histogram::{rebucket, FloatHistogramAcc, HistogramAcc};
use crate::tally::{names, CostSeries, Key, Tally};

/// The family name the corrections are stored under.
const CORRECTIONS: &str = "corrections";

/// A histogram of float observations as stored: its counts, their sum and the bounds they are on.
fn float_hist_json(h: &FloatHistogramAcc, bounds: &[f64]) -> Value {
    json!({"c": h.counts, "s": h.sum, "b": bounds})
}

/// A stored histogram of float observations (`c` counts over the `b` bounds they were taken at,
/// `s` their sum) on `bounds`; `None` when it cannot be read.
fn float_hist(v: &Value, bounds: &[f64]) -> Option<FloatHistogramAcc> {
    let stored: Vec<f64> = serde_json::from_value(v["b"].clone()).ok()?;
    let counts: Vec<u64> = serde_json::from_value(v["c"].clone()).ok()?;
    Some(FloatHistogramAcc {
        counts: rebucket(&stored, &counts, bounds)?,
        sum: v["s"].as_f64()?,
    })
}

/// One series as JSON; `None` for a family or key the tally does not hold.
pub(super) fn encode(t: &Tally, family: &str, key: &Key) -> Option<String> {
    let hist_ms =
        |h: &HistogramAcc, bounds: &[u64]| json!({"c": h.counts, "s": h.sum_ms, "b": bounds});
    let v = match family {
        names::RUNS_ENDED => json!({"n": t.ended.get(key)?}),
        names::RUN_DURATION => {
            let b = &t.settings.run_bounds_ms;
            let h = t.durations.get(key)?;
            json!({"h": h.iter().map(|h| hist_ms(h, b)).collect::<Vec<_>>()})
        }
        names::RUNS_STARTED => json!({"n": t.started.get(key)?}),
        names::COMPUTE => {
            let c = t.cost.get(key)?;
            json!({"ms": c.ms, "gpu_ms": c.gpu_ms, "r": c.by_rate, "idle": c.idle_cost})
        }
        names::GPU_UTILIZATION => float_hist_json(t.gpu_util.get(key)?, &t.settings.gpu_bounds),
        names::EXPERIMENTS_CREATED => json!({"n": t.experiments_created.get(key)?}),
        names::MODELS_CREATED => json!({"n": t.models_created.get(key)?}),
        names::VERSIONS_CREATED => json!({"n": t.versions_created.get(key)?}),
        names::TIME_TO_FIRST_MODEL => hist_ms(&t.time_to_first_model, &t.settings.ttfm_bounds_ms),
        names::LOGGED_MODELS_CREATED => json!({"n": t.logged_models_created.get(key)?}),
        names::PROMPTS_CREATED => json!({"n": t.prompts_created.get(key)?}),
        names::PROMPT_VERSIONS_CREATED => json!({"n": t.prompt_versions_created.get(key)?}),
        names::TIME_TO_REGISTRATION => hist_ms(&t.time_to_registration, &t.settings.reg_bounds_ms),
        names::TRACES => json!({"n": t.traces.get(key)?}),
        names::TRACE_DURATION => {
            let b = &t.settings.trace_bounds_ms;
            let h = t.trace_durations.get(key)?;
            json!({"h": h.iter().map(|h| hist_ms(h, b)).collect::<Vec<_>>()})
        }
        names::TRACE_TOKENS => json!({"n": t.trace_tokens.get(key)?}),
        names::TRACE_COST => json!({"v": t.trace_cost.get(key)?}),
        names::TRACE_FEEDBACK => {
            let f = t.trace_feedback.get(key)?;
            let mut v = float_hist_json(&f.scores, &t.settings.score_bounds);
            v["n"] = json!(f.values);
            v
        }
        names::JUDGE_COST => json!({"v": t.judge_cost.get(key)?}),
        names::LLM_CALLS => {
            let (n, v) = t.llm_calls.get(key)?;
            json!({"n": n, "v": v})
        }
        names::LOGGED_MODEL_TRACES => json!({"n": t.logged_model_traces.get(key)?}),
        names::RATED_TOKENS => {
            let (n, v) = t.rated.get(key)?;
            json!({"n": n, "v": v})
        }
        names::TRACE_ERRORS => {
            let part = key.first()?;
            let i = crate::sync::traces::malformed::KEYS
                .iter()
                .position(|(_, k)| **k == **part)?;
            json!({"n": t.trace_errors[i]})
        }
        names::TRACES_GIVEN_UP => json!({"n": t.traces_given_up}),
        CORRECTIONS => json!({"v": t.corrections.get(key.first().map(|k| &**k)?)?}),
        _ => return None,
    };
    Some(v.to_string())
}

/// Puts one stored series back into the tally; `None` when the row cannot be read.
pub(super) fn decode(t: &mut Tally, family: &str, key: Key, v: &Value) -> Option<()> {
    let n = || v["n"].as_u64();
    match family {
        names::RUNS_ENDED => {
            let counts: [u64; 3] = serde_json::from_value(v["n"].clone()).ok()?;
            t.ended.insert(key, counts);
        }
        names::RUN_DURATION => {
            let mut h: [HistogramAcc; 3] = Default::default();
            for (i, slot) in h.iter_mut().enumerate() {
                let stored = &v["h"][i];
                if stored["c"].as_array().is_some_and(|c| !c.is_empty()) {
                    *slot = hist_ms(stored, &t.settings.run_bounds_ms)?;
                }
            }
            t.durations.insert(key, h);
        }
        names::RUNS_STARTED => {
            t.started.insert(key, n()?);
        }
        names::COMPUTE => {
            let by_rate = v["r"]
                .as_array()?
                .iter()
                .map(|p| Some((p[0].as_f64()?, p[1].as_u64()?)))
                .collect::<Option<Vec<_>>>()?;
            t.cost.insert(
                key,
                CostSeries {
                    ms: v["ms"].as_u64()?,
                    gpu_ms: v["gpu_ms"].as_u64()?,
                    by_rate,
                    idle_cost: v["idle"].as_f64()?,
                },
            );
        }
        names::GPU_UTILIZATION => {
            let h = float_hist(v, &t.settings.gpu_bounds)?;
            t.gpu_util.insert(key, h);
        }
        names::EXPERIMENTS_CREATED => {
            t.experiments_created.insert(key, n()?);
        }
        names::MODELS_CREATED => {
            t.models_created.insert(key, n()?);
        }
        names::VERSIONS_CREATED => {
            t.versions_created.insert(key, n()?);
        }
        names::TIME_TO_FIRST_MODEL => {
            t.time_to_first_model = hist_ms(v, &t.settings.ttfm_bounds_ms)?;
        }
        names::LOGGED_MODELS_CREATED => {
            t.logged_models_created.insert(key, n()?);
        }
        names::PROMPTS_CREATED => {
            t.prompts_created.insert(key, n()?);
        }
        names::PROMPT_VERSIONS_CREATED => {
            t.prompt_versions_created.insert(key, n()?);
        }
        names::TIME_TO_REGISTRATION => {
            t.time_to_registration = hist_ms(v, &t.settings.reg_bounds_ms)?;
        }
        names::TRACES => {
            t.traces
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::TRACE_DURATION => {
            let mut h: [HistogramAcc; 2] = Default::default();
            for (i, slot) in h.iter_mut().enumerate() {
                let stored = &v["h"][i];
                if stored["c"].as_array().is_some_and(|c| !c.is_empty()) {
                    *slot = hist_ms(stored, &t.settings.trace_bounds_ms)?;
                }
            }
            t.trace_durations.insert(key, h);
        }
        names::TRACE_TOKENS => {
            t.trace_tokens
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::TRACE_COST => {
            t.trace_cost.insert(key, v["v"].as_f64()?);
        }
        names::TRACE_FEEDBACK => {
            let values: [u64; 5] = serde_json::from_value(v["n"].clone()).ok()?;
            let scores = float_hist(v, &t.settings.score_bounds)?;
            t.trace_feedback
                .insert(key, crate::tally::traces::FeedbackCounts { values, scores });
        }
        names::JUDGE_COST => {
            t.judge_cost.insert(key, v["v"].as_f64()?);
        }
        names::LLM_CALLS => {
            t.llm_calls.insert(key, (n()?, v["v"].as_f64()?));
        }
        names::LOGGED_MODEL_TRACES => {
            t.logged_model_traces
                .insert(key, serde_json::from_value(v["n"].clone()).ok()?);
        }
        names::RATED_TOKENS => {
            let n: [u64; 2] = serde_json::from_value(v["n"].clone()).ok()?;
            t.rated.insert(key, (n, v["v"].as_f64()?));
        }
        names::TRACE_ERRORS => {
            // A part this version does not read is left alone.
            let part = key.first()?;
            if let Some(i) = crate::sync::traces::malformed::KEYS
                .iter()
                .position(|(_, k)| **k == **part)
            {
                t.trace_errors[i] = n()?;
            }
        }
        names::TRACES_GIVEN_UP => {
            t.traces_given_up = n()?;
        }
        CORRECTIONS => {
            let value = v["v"].as_f64()?;
            // Corrections of a family this version does not count (a later one's, or one that
            // left the tally) are left alone, as its series are.
            if let Some(family) = names::ALL
                .into_iter()
                .find(|f| Some(*f) == key.first().map(|k| &**k))
            {
                t.corrections.insert(family, value);
            }
        }
        // A family of a later version: left alone.
        _ => {}
    }
    Some(())
}

/// A stored histogram in ms, its counts moved onto `bounds` if the buckets were reconfigured.
fn hist_ms(v: &Value, bounds: &[u64]) -> Option<HistogramAcc> {
    let stored: Vec<u64> = serde_json::from_value(v["b"].clone()).ok()?;
    let counts: Vec<u64> = serde_json::from_value(v["c"].clone()).ok()?;
    Some(HistogramAcc {
        counts: rebucket(&stored, &counts, bounds)?,
        sum_ms: v["s"].as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::connect;
    use super::*;

    /// Rows of a family this version does not count, and corrections of one, are left alone:
    /// the tally still loads.
    #[tokio::test]
    async fn rows_of_families_not_counted_here_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = crate::store::EventStore::open(&path).await.unwrap();
        let conn = connect(&path).unwrap();
        for (family, labels, data) in [
            ("mlflow_later_total", r#"["a"]"#, r#"{"n": 3}"#),
            (CORRECTIONS, r#"["mlflow_later_total"]"#, r#"{"v": 2.0}"#),
            (
                CORRECTIONS,
                r#"["mlflow_runs_ended_total"]"#,
                r#"{"v": 1.0}"#,
            ),
        ] {
            conn.execute(
                "INSERT INTO tally_series (family, labels, data) VALUES (?1, ?2, ?3)",
                [family, labels, data],
            )
            .unwrap();
        }
        let settings = crate::config::Settings::default();
        let tally = store.load_tally(Tally::new(&settings)).await.unwrap();
        // Every family counted here has its corrections (at 0 but the one stored), no other.
        assert_eq!(tally.corrections.get(names::RUNS_ENDED), Some(&1.0));
        assert_eq!(tally.corrections.values().sum::<f64>(), 1.0);
        assert_eq!(tally.corrections.len(), names::ALL.len());
    }
}
