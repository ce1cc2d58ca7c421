//! MLflow 3's traces of GenAI apps, written by the MLflow SDK into a real MLflow 3.17.2: counted
//! once each by experiment and state, with their durations, tokens and the cost MLflow recorded;
//! a trace in progress is counted when it ends; an incremental cycle and a restart neither lose
//! nor count one twice.

use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{FlagOverrides, Settings};
use serde_json::{json, Value};

use crate::support;
use crate::support::exporter::example_config;
use crate::support::http::http_post;
use crate::support::mlflow::MlflowServer;
use crate::support::now_ms;
use crate::support::scrape::{scrape, Scrape};

/// The SDK's part: a chat turn of an app in `genai-chat` for each (user, session) of `turns` (an
/// LLM span of gpt-4o with 10 input and 22 output tokens each), and on the first call one turn
/// that fails and one call in `genai-other` that names no user. Prints, per finished trace it
/// wrote, `TRACE <experiment> <state> <duration ms> <total cost or ->`.
fn sdk(
    server: &MlflowServer,
    turns: &[(&str, &str)],
    first: bool,
) -> Vec<(String, String, i64, Option<f64>)> {
    let turns = serde_json::to_string(turns).unwrap();
    let script = format!(
        r#"
import json
import mlflow
from mlflow.entities import SpanType

@mlflow.trace(span_type=SpanType.LLM)
def llm(q, model="gpt-4o", provider="openai"):
    usage = {{"input_tokens": 10, "output_tokens": 22, "total_tokens": 32}}
    mlflow.get_current_active_span().set_attributes({{"mlflow.chat.tokenUsage": usage}})
    return "a"

@mlflow.trace
def chat(q, user, session):
    mlflow.update_current_trace(metadata={{"mlflow.trace.user": user, "mlflow.trace.session": session}})
    return llm(q)

@mlflow.trace
def broken(q):
    raise ValueError("boom")

@mlflow.trace
def plain(q):
    return q

ids = []
mlflow.set_experiment("genai-chat")
for user, session in json.loads({turns:?}):
    chat("hi", user, session)
    ids.append(mlflow.get_last_active_trace_id())
if {first}:
    try:
        broken("x")
    except ValueError:
        pass
    ids.append(mlflow.get_last_active_trace_id())
    mlflow.set_experiment("genai-other")
    plain("y")
    ids.append(mlflow.get_last_active_trace_id())
c = mlflow.MlflowClient()
for i in ids:
    t = c.get_trace(i).info
    e = c.get_experiment(t.experiment_id).name
    cost = json.loads(t.trace_metadata.get("mlflow.trace.cost", "null") or "null")
    print("TRACE", e, t.state.value if hasattr(t.state, "value") else t.state, t.execution_duration,
          cost["total_cost"] if cost else "-")
"#,
        first = if first { "True" } else { "False" }
    );
    server
        .python(&script)
        .lines()
        .filter_map(|l| l.strip_prefix("TRACE "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].to_string(),
                w[1].to_string(),
                w[2].parse().unwrap(),
                w[3].parse().ok(),
            )
        })
        .collect()
}

/// Settings to read `server`, with the event store in `store` and `vars` set as the environment
/// would.
fn settings_for(server: &MlflowServer, store: &std::path::Path, vars: &[(&str, &str)]) -> Settings {
    let mut env: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("MLFLOW_TRACKING_URI".into(), server.url.clone());
    let flags = FlagOverrides {
        storage_path: Some(store.join("events.db").display().to_string()),
        ..FlagOverrides::default()
    };
    Settings::load(Some(&example_config()), &env, &flags).unwrap()
}

/// A trace written as an app that logs its spans as they come does: first in progress, then
/// finished (MLflow's `StartTraceV3` again, with its state and duration).
fn start_trace(server: &MlflowServer, experiment_id: &str, state: &str, start_ms: i64) {
    let time = chrono::DateTime::from_timestamp_millis(start_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut info = json!({
        "trace_id": "tr-0000000000000000000000000000abcd",
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}},
        "request_time": time,
        "state": state,
    });
    if state != "IN_PROGRESS" {
        info["execution_duration"] = json!("2s");
    }
    let body = json!({"trace": {"trace_info": info}}).to_string();
    let addr = server.url.trim_start_matches("http://");
    let r = http_post(
        addr,
        "/api/3.0/mlflow/traces",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn experiment_id(server: &MlflowServer, name: &str) -> String {
    let addr = server.url.trim_start_matches("http://");
    let r = support::http::http_get(
        addr,
        &format!("/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"),
        &[],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What the SDK wrote, summed as the exporter must: per (experiment, state) the traces, their
/// durations in ms and (genai-chat) what MLflow recorded they cost, in the order written.
#[derive(Default, Debug)]
struct Expected {
    count: std::collections::BTreeMap<(String, String), (u64, i64)>,
    cost: Vec<f64>,
}

impl Expected {
    fn add(&mut self, traces: &[(String, String, i64, Option<f64>)]) {
        for (e, st, ms, cost) in traces {
            let slot = self.count.entry((e.clone(), st.clone())).or_default();
            slot.0 += 1;
            slot.1 += ms;
            if let Some(c) = cost {
                self.cost.push(*c);
            }
        }
    }

    fn check(&self, s: &Scrape) {
        for ((e, st), (n, ms)) in &self.count {
            let l = [("experiment", e.as_str()), ("state", st.as_str())];
            assert_eq!(s.get("mlflow_traces_total", &l), *n as f64, "{e} {st}");
            let h = "mlflow_trace_duration_seconds";
            assert_eq!(s.get(&format!("{h}_count"), &l), *n as f64, "{e} {st}");
            assert_eq!(
                s.get(&format!("{h}_sum"), &l),
                *ms as f64 / 1000.0,
                "{e} {st}"
            );
        }
        let cost: f64 = self.cost.iter().sum();
        assert_eq!(
            s.get("mlflow_trace_cost_total", &[("experiment", "genai-chat")]),
            cost
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_count_once_by_experiment_and_state_across_cycles_and_a_restart() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let mut expected = Expected::default();
    let first = tokio::task::block_in_place(|| {
        sdk(
            &server,
            &[("ann", "s1"), ("ann", "s1"), ("bob", "s2")],
            true,
        )
    });
    assert_eq!(first.len(), 5, "{first:?}");
    expected.add(&first);
    // MLflow priced gpt-4o's tokens: each chat turn has a cost, the others none.
    assert_eq!(expected.cost.len(), 3, "{first:?}");
    let other = tokio::task::block_in_place(|| experiment_id(&server, "genai-other"));
    let t = now_ms() / 1000 * 1000;
    tokio::task::block_in_place(|| start_trace(&server, &other, "IN_PROGRESS", t - 1_000));

    let store = tempfile::tempdir().unwrap();
    let settings = settings_for(&server, store.path(), &[]);
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    let report = pipeline.cycle(t).await.unwrap();
    // Five finished, one in progress: read, not counted.
    assert_eq!(report.traces_read, 6);
    assert!(
        report.traces_failed.is_empty(),
        "{:?}",
        report.traces_failed
    );
    let s = scrape(&pipeline.publisher);
    expected.check(&s);
    let chat = |kind: &'static str| [("experiment", "genai-chat"), ("token_type", kind)];
    assert_eq!(s.get("mlflow_trace_tokens_total", &chat("input")), 30.0);
    assert_eq!(s.get("mlflow_trace_tokens_total", &chat("output")), 66.0);
    let plain = [("experiment", "genai-other"), ("token_type", "input")];
    assert_eq!(s.get("mlflow_trace_tokens_total", &plain), 0.0);
    // Every experiment with traces has both states' series from the start.
    let failed = [("experiment", "genai-other"), ("state", "ERROR")];
    assert_eq!(s.get("mlflow_traces_total", &failed), 0.0);
    assert_eq!(
        s.get(
            "mlflow_traces_total",
            &[("experiment", "genai-other"), ("state", "OK")]
        ),
        1.0
    );
    assert_eq!(
        s.family("mlflow_exporter_trace_errors_total")
            .values()
            .sum::<f64>(),
        0.0
    );
    assert_eq!(s.get("mlflow_exporter_traces_given_up_total", &[]), 0.0);
    // The app's own users and sessions, at every window; the other app names none.
    let people = |s: &Scrape, app: &str, users: f64, sessions: f64| {
        for window in ["1d", "7d", "30d"] {
            let l = [("experiment", app), ("window", window)];
            assert_eq!(
                s.get("mlflow_app_active_users", &l),
                users,
                "{app} {window}"
            );
            assert_eq!(
                s.get("mlflow_app_active_sessions", &l),
                sessions,
                "{app} {window}"
            );
        }
    };
    people(&s, "genai-chat", 2.0, 2.0);
    people(&s, "genai-other", 0.0, 0.0);

    // The trace in progress ends (2 s), and two more chat turns: the next cycle counts those
    // three, and nothing of what it read again.
    tokio::task::block_in_place(|| start_trace(&server, &other, "OK", t - 1_000));
    let more = tokio::task::block_in_place(|| sdk(&server, &[("cid", "s3"), ("ann", "s4")], false));
    expected.add(&more);
    expected.add(&[("genai-other".into(), "OK".into(), 2_000, None)]);
    let report = pipeline.cycle(t + 60_000).await.unwrap();
    assert_eq!(report.mode, mlflow_exporter::sync::Mode::Incremental);
    let s = scrape(&pipeline.publisher);
    expected.check(&s);
    assert_eq!(
        s.get(
            "mlflow_traces_total",
            &[("experiment", "genai-other"), ("state", "OK")]
        ),
        2.0
    );
    assert_eq!(s.get("mlflow_trace_tokens_total", &chat("input")), 50.0);
    people(&s, "genai-chat", 3.0, 4.0);

    // After a restart the traces read again (the overlap) are not counted again.
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, t + 120_000).await.unwrap();
    let s = scrape(&pipeline.publisher);
    assert!(s.family("mlflow_traces_total").is_empty());
    let report = pipeline.cycle(t + 120_000).await.unwrap();
    assert_eq!(report.traces_read, 8);
    let s = scrape(&pipeline.publisher);
    expected.check(&s);
    assert_eq!(s.get("mlflow_trace_tokens_total", &chat("output")), 110.0);
    people(&s, "genai-chat", 3.0, 4.0);
    // Eight days later nobody was active in the last day or week; the 30-day window still holds
    // them.
    let later = t + 8 * 86_400_000;
    pipeline.publish(later).await;
    let s = scrape(&pipeline.publisher);
    for (window, n) in [("1d", 0.0), ("7d", 0.0), ("30d", 3.0)] {
        let l = [("experiment", "genai-chat"), ("window", window)];
        assert_eq!(s.get("mlflow_app_active_users", &l), n, "{window}");
    }
}

/// The SDK's part of the feedback test: runs `script` (after a prelude with `mlflow`, the
/// sources and `fb(trace, name, value, source, cost=None)`) and returns what it prints as
/// `ID <name> <id>`.
fn feedback_sdk(server: &MlflowServer, script: &str) -> std::collections::HashMap<String, String> {
    let prelude = r#"
import json, time
import mlflow
from mlflow.entities import AssessmentSource

def fb(trace, name, value, source, cost=None, error=None):
    meta = {"mlflow.assessment.judgeCost": cost} if cost is not None else None
    a = mlflow.log_feedback(trace_id=trace, name=name, value=value, error=error,
                            source=AssessmentSource(source_type=source, source_id="t"), metadata=meta)
    return a.assessment_id

@mlflow.trace
def answer(q):
    return q

mlflow.set_experiment("genai-fb")
"#;
    server
        .python(&format!("{prelude}{script}"))
        .lines()
        .filter_map(|l| l.strip_prefix("ID "))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Feedback (`mlflow.log_feedback`) is counted once each by experiment, name, source and value,
/// scores in a histogram and LLM judges' cost summed; feedback given after its trace was counted
/// (outside the overlap, inside `mlflow.feedback_window`) is counted by a later read, and an
/// override counts as new feedback; a restart counts nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_counts_once_late_feedback_too_and_survives_a_restart() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    // Trace one, then two seconds later trace two: with an overlap of one second, the reads after
    // the first reach trace one only through the feedback window.
    let ids = tokio::task::block_in_place(|| {
        feedback_sdk(
            &server,
            r#"
answer("one"); one = mlflow.get_last_active_trace_id()
time.sleep(2)
answer("two"); two = mlflow.get_last_active_trace_id()
fb(one, "helpful", True, "HUMAN")
score = fb(one, "score", 0.75, "LLM_JUDGE", cost="0.0012")
fb(one, "correct", "yes", "LLM_JUDGE", cost="0.002")
fb(one, "correct", None, "LLM_JUDGE", error=ValueError("judge failed"))
mlflow.log_expectation(trace_id=one, name="expected", value="one")
print("ID one", one); print("ID two", two); print("ID score", score)
"#,
        )
    });
    let store = tempfile::tempdir().unwrap();
    let settings = settings_for(
        &server,
        store.path(),
        &[
            ("MLFLOW_EXPORTER_MLFLOW__TRACES_OVERLAP", "1s"),
            ("MLFLOW_EXPORTER_MLFLOW__FEEDBACK_INTERVAL", "0s"),
        ],
    );
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    pipeline.cycle(t).await.unwrap();
    let s = scrape(&pipeline.publisher);
    let fam = "mlflow_trace_feedback_total";
    let f = |s: &Scrape, name: &str, source: &str, value: &str| {
        s.get(
            fam,
            &[
                ("experiment", "genai-fb"),
                ("name", name),
                ("source_type", source),
                ("value", value),
            ],
        )
    };
    // Each name and source has all five values, from its first feedback on.
    assert_eq!(s.family(fam).len(), 3 * 5, "{:?}", s.family(fam));
    assert_eq!(f(&s, "helpful", "HUMAN", "true"), 1.0);
    assert_eq!(f(&s, "helpful", "HUMAN", "false"), 0.0);
    assert_eq!(f(&s, "score", "LLM_JUDGE", "numeric"), 1.0);
    assert_eq!(f(&s, "correct", "LLM_JUDGE", "true"), 1.0);
    assert_eq!(f(&s, "correct", "LLM_JUDGE", "error"), 1.0);
    let score = |s: &Scrape, source: &str, part: &str| {
        s.get(
            &format!("mlflow_trace_feedback_score_{part}"),
            &[
                ("experiment", "genai-fb"),
                ("name", "score"),
                ("source_type", source),
            ],
        )
    };
    assert_eq!(score(&s, "LLM_JUDGE", "count"), 1.0);
    assert_eq!(score(&s, "LLM_JUDGE", "sum"), 0.75);
    let judge = [("experiment", "genai-fb")];
    assert_eq!(
        s.get("mlflow_trace_judge_cost_total", &judge),
        0.0012 + 0.002
    );
    assert_eq!(
        s.family("mlflow_exporter_trace_errors_total")
            .values()
            .sum::<f64>(),
        0.0
    );

    // Later: a user's thumbs-down on trace one, a code check's score on trace two, and the
    // judge's score of trace one overridden (the old one no longer valid; the new one counts).
    tokio::task::block_in_place(|| {
        feedback_sdk(
            &server,
            &format!(
                r#"
fb("{one}", "helpful", False, "HUMAN")
fb("{two}", "score", 4, "CODE")
mlflow.override_feedback(trace_id="{one}", assessment_id="{score}", value=0.5,
    source=AssessmentSource(source_type="LLM_JUDGE", source_id="t"))
"#,
                one = ids["one"],
                two = ids["two"],
                score = ids["score"],
            ),
        )
    });
    let check = |s: &Scrape| {
        assert_eq!(f(s, "helpful", "HUMAN", "true"), 1.0);
        assert_eq!(f(s, "helpful", "HUMAN", "false"), 1.0);
        assert_eq!(f(s, "score", "LLM_JUDGE", "numeric"), 2.0);
        assert_eq!(f(s, "score", "CODE", "numeric"), 1.0);
        assert_eq!(f(s, "correct", "LLM_JUDGE", "true"), 1.0);
        assert_eq!(score(s, "LLM_JUDGE", "sum"), 0.75 + 0.5);
        assert_eq!(score(s, "CODE", "sum"), 4.0);
        // 4 is past the 3 bucket, within 4.
        let le = |b: &str| {
            s.get(
                "mlflow_trace_feedback_score_bucket",
                &[
                    ("experiment", "genai-fb"),
                    ("le", b),
                    ("name", "score"),
                    ("source_type", "CODE"),
                ],
            )
        };
        assert_eq!((le("3"), le("4")), (0.0, 1.0));
        // The traces themselves once.
        let ok = [("experiment", "genai-fb"), ("state", "OK")];
        assert_eq!(s.get("mlflow_traces_total", &ok), 2.0);
    };
    pipeline.cycle(t + 10_000).await.unwrap();
    check(&scrape(&pipeline.publisher));
    // Read again: nothing more.
    pipeline.cycle(t + 20_000).await.unwrap();
    check(&scrape(&pipeline.publisher));

    // After a restart, the window read again counts nothing twice.
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, t + 30_000).await.unwrap();
    pipeline.cycle(t + 30_000).await.unwrap();
    let s = scrape(&pipeline.publisher);
    check(&s);
    assert_eq!(
        s.get("mlflow_trace_judge_cost_total", &judge),
        0.0012 + 0.002
    );
}

/// Each app's LLM calls by model (MLflow's SPANS aggregation of its traces) are counted once a
/// window has closed (`mlflow.traces_overlap` after it ends), once each: not again by the next
/// cycle, nor after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_count_once_by_app_and_model() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    // Three requests, each two calls of gpt-4o (which MLflow prices) and one of a model it has
    // no price for.
    let script = r#"
import mlflow
from mlflow.entities import SpanType

@mlflow.trace(span_type=SpanType.LLM)
def gpt(q, model="gpt-4o"):
    mlflow.get_current_active_span().set_attributes(
        {"mlflow.chat.tokenUsage": {"input_tokens": 10, "output_tokens": 22, "total_tokens": 32}})
    return "a"

@mlflow.trace(span_type=SpanType.CHAT_MODEL)
def local(q, model="house-llm-7b"):
    return "b"

@mlflow.trace
def agent(q):
    return gpt(q) + local(q) + gpt(q)

mlflow.set_experiment("genai-agent")
for q in ["a", "b", "c"]:
    agent(q)
"#;
    tokio::task::block_in_place(|| server.python(script));
    let store = tempfile::tempdir().unwrap();
    let settings = settings_for(
        &server,
        store.path(),
        &[("MLFLOW_EXPORTER_MLFLOW__LLM_CALLS_INTERVAL", "0s")],
    );
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    // The first cycle finds the app; its calls are read once their window has closed.
    pipeline.cycle(t).await.unwrap();
    let s = scrape(&pipeline.publisher);
    assert!(s.family("mlflow_trace_llm_calls_total").is_empty());
    let later = t + 16 * 60_000;
    let report = pipeline.cycle(later).await.unwrap();
    assert!(
        report.traces_failed.is_empty(),
        "{:?}",
        report.traces_failed
    );
    // MLflow's own sum of the spans' cost over the same window.
    let exp = tokio::task::block_in_place(|| experiment_id(&server, "genai-agent"));
    let body = json!({
        "experiment_ids": [exp], "view_type": "SPANS", "metric_name": "total_cost",
        "aggregations": [{"aggregation_type": "SUM"}], "dimensions": ["span_model_name"],
        "end_time_ms": later - 15 * 60_000 - 1,
    })
    .to_string();
    let addr = server.url.trim_start_matches("http://");
    let r = http_post(
        addr,
        "/api/3.0/mlflow/traces/metrics",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let mlflow_cost = v["data_points"][0]["values"]["SUM"].as_f64().unwrap();
    assert!((mlflow_cost - 6.0 * 0.000245).abs() < 1e-12, "{v}");
    let check = |s: &Scrape| {
        let l = |m: &'static str| [("experiment", "genai-agent"), ("llm_model", m)];
        assert_eq!(s.get("mlflow_trace_llm_calls_total", &l("gpt-4o")), 6.0);
        assert_eq!(
            s.get("mlflow_trace_llm_calls_total", &l("house-llm-7b")),
            3.0
        );
        assert_eq!(
            s.get("mlflow_trace_llm_cost_total", &l("gpt-4o")),
            mlflow_cost
        );
        assert_eq!(
            s.get("mlflow_trace_llm_cost_total", &l("house-llm-7b")),
            0.0
        );
        assert_eq!(s.family("mlflow_trace_llm_calls_total").len(), 2);
    };
    check(&scrape(&pipeline.publisher));
    // The next window holds nothing: the same figures.
    pipeline.cycle(later + 60_000).await.unwrap();
    check(&scrape(&pipeline.publisher));
    // After a restart the windows read stay read.
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, later + 120_000).await.unwrap();
    for at in [later + 120_000, later + 180_000] {
        pipeline.cycle(at).await.unwrap();
        check(&scrape(&pipeline.publisher));
    }
}

/// Traces of an app running as a logged model count toward it, production traffic apart from
/// the evaluation traffic `mlflow.genai.evaluate` makes in its run (which the `evaluation`
/// feature counts the user of); the evaluation's code scorer is feedback like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_of_a_logged_model_split_evaluation_from_production() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let script = r#"
import mlflow
from mlflow.genai.scorers import scorer

mlflow.set_experiment("genai-eval")
mlflow.set_active_model(name="agent-v1")

@mlflow.trace
def agent(question):
    if question == "boom":
        raise ValueError("no")
    return question.upper()

for q in ["a", "b", "c", "boom"]:
    try:
        agent(q)
    except ValueError:
        pass

@scorer
def short(outputs):
    return len(outputs) < 2

mlflow.genai.evaluate(
    data=[{"inputs": {"question": "x"}}, {"inputs": {"question": "yy"}}],
    predict_fn=agent, scorers=[short])
"#;
    tokio::task::block_in_place(|| server.python(script));
    let store = tempfile::tempdir().unwrap();
    let settings = settings_for(&server, store.path(), &[]);
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    pipeline.cycle(t).await.unwrap();
    let check = |s: &Scrape| {
        let l = |traffic: &'static str, state: &'static str| {
            [
                ("experiment", "genai-eval"),
                ("logged_model", "agent-v1"),
                ("state", state),
                ("traffic", traffic),
            ]
        };
        let fam = "mlflow_logged_model_traces_total";
        assert_eq!(s.get(fam, &l("production", "OK")), 3.0);
        assert_eq!(s.get(fam, &l("production", "ERROR")), 1.0);
        assert_eq!(s.get(fam, &l("evaluation", "OK")), 2.0);
        assert_eq!(s.get(fam, &l("evaluation", "ERROR")), 0.0);
        assert_eq!(s.family(fam).len(), 4);
        let ok = [("experiment", "genai-eval"), ("state", "OK")];
        assert_eq!(s.get("mlflow_traces_total", &ok), 5.0);
        // The scorer said "x" is short and "YY" is not.
        let f = |value: &'static str| {
            [
                ("experiment", "genai-eval"),
                ("name", "short"),
                ("source_type", "CODE"),
                ("value", value),
            ]
        };
        assert_eq!(s.get("mlflow_trace_feedback_total", &f("true")), 1.0);
        assert_eq!(s.get("mlflow_trace_feedback_total", &f("false")), 1.0);
        // The evaluation's run, and traces made in it: one user of each feature.
        for feature in ["evaluation", "tracing"] {
            let l = [("feature", feature), ("window", "1d")];
            assert_eq!(s.get("mlflow_feature_users", &l), 1.0, "{feature}");
        }
    };
    check(&scrape(&pipeline.publisher));
    // Read again: the same.
    pipeline.cycle(t + 30_000).await.unwrap();
    check(&scrape(&pipeline.publisher));
}

/// With a rate card (`cost.token_rates`), the calls MLflow did not price (a model it has no price
/// for) are priced by it: each trace counted is read whole once, later, across a restart too; a
/// call MLflow priced is left to MLflow's figure even when the card names its model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_card_prices_the_calls_mlflow_does_not() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let prelude = r#"
import mlflow
from mlflow.entities import SpanType
mlflow.set_experiment("genai-rated")
"#;
    tokio::task::block_in_place(|| server.python(prelude));
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(example_config())
        .unwrap()
        .replace(
            "cost:\n",
            "cost:\n  token_rates:\n    - {model: house-llm-7b, input: 1.0, output: 4.0}\n    - {model: gpt-4o, input: 100.0, output: 100.0}\n",
        );
    let config = support::write_file(dir.path(), "config.yaml", &config);
    let env = [("MLFLOW_TRACKING_URI".to_string(), server.url.clone())].into();
    let flags = FlagOverrides {
        storage_path: Some(dir.path().join("events.db").display().to_string()),
        ..FlagOverrides::default()
    };
    let settings = Settings::load(Some(&config), &env, &flags).unwrap();
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    // The first read (no trace yet): the history, which the card does not price.
    pipeline.cycle(t).await.unwrap();
    // Three requests, each a call of gpt-4o (MLflow prices it) and one of a model it cannot.
    let script = format!(
        r#"{prelude}
@mlflow.trace(span_type=SpanType.LLM)
def gpt(q, model="gpt-4o"):
    mlflow.get_current_active_span().set_attributes(
        {{"mlflow.chat.tokenUsage": {{"input_tokens": 10, "output_tokens": 22, "total_tokens": 32}}}})
    return "a"

@mlflow.trace(span_type=SpanType.CHAT_MODEL)
def local(q, model="house-llm-7b"):
    mlflow.get_current_active_span().set_attributes(
        {{"mlflow.chat.tokenUsage": {{"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}}}})
    return "b"

@mlflow.trace
def agent(q):
    return gpt(q) + local(q)

for q in ["a", "b", "c"]:
    agent(q)
"#
    );
    tokio::task::block_in_place(|| server.python(&script));
    // Counted now, read whole from the next cycle on, after a restart here.
    pipeline.cycle(t + 1_000).await.unwrap();
    assert_eq!(pipeline.tally.trace_state.unrated.len(), 3);
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, t + 2_000).await.unwrap();
    assert_eq!(pipeline.tally.trace_state.unrated.len(), 3);
    let per_call = (100.0 * 1.0 + 50.0 * 4.0) / 1e6;
    let check = |s: &Scrape| {
        let l = |kind: &'static str| {
            [
                ("experiment", "genai-rated"),
                ("llm_model", "house-llm-7b"),
                ("token_type", kind),
            ]
        };
        let fam = "mlflow_trace_rated_tokens_total";
        assert_eq!(s.get(fam, &l("input")), 300.0);
        assert_eq!(s.get(fam, &l("output")), 150.0);
        // gpt-4o's calls are MLflow's to price.
        assert_eq!(s.family(fam).len(), 2, "{:?}", s.family(fam));
        let cost = [("experiment", "genai-rated"), ("llm_model", "house-llm-7b")];
        assert_eq!(
            s.get("mlflow_trace_rated_cost_total", &cost),
            per_call + per_call + per_call
        );
        let ok = [("experiment", "genai-rated"), ("state", "OK")];
        assert_eq!(s.get("mlflow_traces_total", &ok), 3.0);
    };
    pipeline.cycle(t + 2_000).await.unwrap();
    assert!(pipeline.tally.trace_state.unrated.is_empty());
    check(&scrape(&pipeline.publisher));
    // Nothing is read whole again.
    pipeline.cycle(t + 3_000).await.unwrap();
    check(&scrape(&pipeline.publisher));
}
