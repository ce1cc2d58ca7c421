//! Unit tests of the traces' records: what one trace, its feedback and its tokens become, and
//! pages of `traces/search` and `traces/batchGet` as MLflow answers them.

use super::*;
use crate::source::mlflow::model::TraceMetadata;

fn info(
    time: &str,
    duration: &str,
    state: &str,
    usage: Option<&str>,
    cost: Option<&str>,
) -> TraceInfo {
    TraceInfo {
        trace_id: "tr-51f984dbe6fba1e2c2ba7492042c82ad".into(),
        request_time: time.into(),
        execution_duration: duration.into(),
        state: state.into(),
        trace_metadata: TraceMetadata {
            token_usage: usage.map(String::from),
            cost: cost.map(String::from),
            ..TraceMetadata::default()
        },
        ..TraceInfo::default()
    }
}

/// As MLflow 3.17.2 wrote one (`traces/search` of a trace logged by the SDK).
#[test]
fn a_trace_as_mlflow_writes_it() {
    let r = record(&info(
        "2026-12-03T17:13:10.767Z",
        "0.049s",
        "OK",
        Some(r#"{"input_tokens": 10, "output_tokens": 22, "total_tokens": 32}"#),
        Some(r#"{"input_cost": 2.5e-05, "output_cost": 0.00022, "total_cost": 0.000245}"#),
    ));
    assert_eq!(
        r,
        TraceRecord {
            id: 0x51f984dbe6fba1e2c2ba7492042c82ad,
            start_ms: 1_796_317_990_767,
            duration_ms: 49,
            input_tokens: 10,
            output_tokens: 22,
            cost: 0.000245,
            state: TraceState::Ok,
            malformed: 0,
            user: 0,
            session: 0,
            model: 0,
            in_run: false,
        }
    );
    assert_eq!(std::mem::size_of::<TraceRecord>(), 80);
}

/// Whatever is wrong with a trace's metadata is left out and flagged, never a panic; the
/// rest of it still counts.
#[test]
fn malformed_metadata_is_flagged_and_left_out() {
    // (request time, duration, state, token usage, cost, the bits flagged)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        u8,
    );
    let cases: [Case; 9] = [
        ("x", "1s", "OK", None, None, malformed::REQUEST_TIME),
        (
            "2026-12-03T17:13:10Z",
            "-1s",
            "OK",
            None,
            None,
            malformed::EXECUTION_DURATION,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1",
            "OK",
            None,
            None,
            malformed::EXECUTION_DURATION,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "DONE",
            None,
            None,
            malformed::STATE,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "OK",
            Some("{not json"),
            None,
            malformed::TOKEN_USAGE,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "OK",
            Some(r#"{"input_tokens": -3}"#),
            None,
            malformed::TOKEN_USAGE,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "OK",
            Some(r#"{"input_tokens": 1e300, "output_tokens": 1}"#),
            None,
            malformed::TOKEN_USAGE,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "OK",
            Some(r#"{"total_tokens": 5}"#),
            Some("[]"),
            malformed::TOKEN_USAGE | malformed::COST,
        ),
        (
            "2026-12-03T17:13:10Z",
            "1s",
            "OK",
            None,
            Some(r#"{"total_cost": -1}"#),
            malformed::COST,
        ),
    ];
    for (time, duration, state, usage, cost, bits) in cases {
        let r = record(&info(time, duration, state, usage, cost));
        assert_eq!(
            r.malformed, bits,
            "{time} {duration} {state} {usage:?} {cost:?}"
        );
        assert_eq!((r.input_tokens, r.output_tokens), (0, 0));
    }
    // Only an output count: the input is 0.
    let r = record(&info(
        "2026-12-03T17:13:10Z",
        "2.5s",
        "ERROR",
        Some(r#"{"output_tokens": 7}"#),
        None,
    ));
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.duration_ms, r.malformed),
        (0, 7, 2500, 0)
    );
    assert_eq!(r.state, TraceState::Error);
    assert!(r.cost.is_nan());
}

/// A trace whose start cannot be read takes its page's latest start.
#[test]
fn a_trace_without_a_readable_start_takes_its_pages_latest() {
    let mut batch = TraceBatch::default();
    let mut a = info("2026-12-03T17:13:10Z", "1s", "OK", None, None);
    a.trace_location.mlflow_experiment.experiment_id = "1".into();
    let mut b = a.clone();
    b.request_time = "yesterday".into();
    b.trace_id = "client-id".into();
    batch.add(vec![b, a]);
    let got = &batch.by_experiment["1"];
    assert_eq!(got[0].start_ms, got[1].start_ms);
    assert_eq!(got[0].malformed, malformed::REQUEST_TIME);
    assert_ne!(got[0].id, got[1].id);
    assert_eq!(batch.latest_ms, Some(got[1].start_ms));
    assert_eq!(batch.len(), 2);
}

mod pages {
    use super::super::{malformed, FeedbackValue, TraceBatch};
    use crate::source::mlflow::model::SearchTracesResponse;

    /// Spans as MLflow 3.17.2's `traces/batchGet` returns them (OpenTelemetry attributes): the
    /// calls that name a model, their tokens, and whether MLflow priced them; the rest is dropped.
    #[test]
    fn span_calls_are_read_from_batch_get() {
        use crate::source::mlflow::model::{BatchGetTracesResponse, SpanCall};
        let answer = r#"{"traces": [{"trace_info": {"trace_id": "tr-1195bebe1706401c7b7092ee85bbe296"},
          "spans": [
            {"name": "chat", "attributes": [
              {"key": "mlflow.spanType", "value": {"string_value": "UNKNOWN"}},
              {"key": "mlflow.spanInputs", "value": {"kvlist_value": {"values": [{"key": "q", "value": {"string_value": "x"}}]}}}]},
            {"name": "llm", "attributes": [
              {"key": "mlflow.chat.tokenUsage", "value": {"kvlist_value": {"values": [
                {"key": "input_tokens", "value": {"int_value": "10"}},
                {"key": "output_tokens", "value": {"int_value": 22}},
                {"key": "total_tokens", "value": {"int_value": "32"}}]}}},
              {"key": "mlflow.llm.model", "value": {"string_value": "gpt-4o"}},
              {"key": "mlflow.llm.cost", "value": {"kvlist_value": {"values": []}}}]},
            {"name": "llm2", "attributes": [
              {"key": "mlflow.chat.tokenUsage", "value": {"kvlist_value": {"values": [
                {"key": "input_tokens", "value": {"int_value": "-5"}},
                {"key": "output_tokens", "value": {"int_value": "50"}}]}}},
              {"key": "mlflow.llm.model", "value": {"string_value": "house-llm-7b"}}]},
            "not a span"
          ]}]}"#;
        let r: BatchGetTracesResponse = serde_json::from_str(answer).unwrap();
        let calls: Vec<SpanCall> = r.traces[0].spans.iter().filter_map(|s| s.call()).collect();
        assert_eq!(
            r.traces[0].trace_info.trace_id,
            "tr-1195bebe1706401c7b7092ee85bbe296"
        );
        assert_eq!(
            calls,
            [
                SpanCall {
                    model: "gpt-4o".into(),
                    input_tokens: 10,
                    output_tokens: 22,
                    priced: true
                },
                // A negative count is no count.
                SpanCall {
                    model: "house-llm-7b".into(),
                    input_tokens: 0,
                    output_tokens: 50,
                    priced: false
                },
            ]
        );
    }

    /// Assessments as MLflow 3.17.2 returned them in `traces/search` (logged with
    /// `mlflow.log_feedback` and `log_expectation`), with a judge's yes, an overridden feedback
    /// and two that cannot be read added: the expectation and the overridden one are left out.
    #[test]
    fn feedback_is_read_from_the_traces_assessments() {
        let page = r#"{"traces": [{"trace_id": "tr-df802ab41d4f6a3860662b78ce249463",
          "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "1"}},
          "request_time": "2026-12-04T01:07:03.117Z", "execution_duration": "0.098s", "state": "OK",
          "assessments": [
            {"assessment_id": "a-b94e1df415404dcaacf52300c1bc96a8", "assessment_name": "helpful",
             "source": {"source_type": "HUMAN", "source_id": "ann"}, "feedback": {"value": true}, "valid": true},
            {"assessment_id": "a-9ca0fabc8f1a453d854425654262873a", "assessment_name": "score",
             "source": {"source_type": "LLM_JUDGE", "source_id": "gpt-4o"}, "feedback": {"value": 0.75},
             "metadata": {"mlflow.assessment.judgeCost": "0.0012"}, "valid": true},
            {"assessment_id": "a-274b6f9a1e98414ab41e835c8e562776", "assessment_name": "tone",
             "source": {"source_type": "CODE", "source_id": "rule"}, "feedback": {"value": "polite"}, "valid": true},
            {"assessment_id": "a-653be5cd504d4802bcdcf2fbda26b60a", "assessment_name": "expected",
             "source": {"source_type": "HUMAN", "source_id": "default"}, "expectation": {"value": "x"}, "valid": true},
            {"assessment_id": "a-70335e61343a4ccb8e0e890dfa58c6ed", "assessment_name": "bad",
             "source": {"source_type": "LLM_JUDGE", "source_id": "gpt-4o"},
             "feedback": {"value": null, "error": {"error_code": "ValueError", "error_message": "judge failed"}}, "valid": true},
            {"assessment_id": "a-00000000000000000000000000000001", "assessment_name": "correct",
             "source": {"source_type": "AI_JUDGE"}, "feedback": {"value": "Yes"},
             "metadata": {"mlflow.assessment.judgeCost": "abc"}},
            {"assessment_id": "a-00000000000000000000000000000002", "assessment_name": "helpful",
             "source": {"source_type": "HUMAN"}, "feedback": {"value": false}, "valid": false},
            {"assessment_name": "no id", "feedback": {"value": true}},
            "not an object"
          ]}], "next_page_token": null}"#;
        let p: SearchTracesResponse = serde_json::from_str(page).unwrap();
        let mut batch = TraceBatch::default();
        batch.add(p.traces);
        let trace = &batch.by_experiment["1"][0];
        assert_eq!(trace.malformed, malformed::ASSESSMENT);
        let got: Vec<(&str, u8, FeedbackValue, String, u8)> = batch.feedback["1"]
            .iter()
            .map(|f| {
                assert_eq!(f.trace_start_ms, trace.start_ms);
                (
                    &*f.name,
                    f.source,
                    f.value,
                    format!("{:?}", f.judge_cost),
                    f.malformed,
                )
            })
            .collect();
        let nan = format!("{:?}", f64::NAN);
        assert_eq!(
            got,
            [
                ("helpful", 0, FeedbackValue::True, nan.clone(), 0),
                ("score", 2, FeedbackValue::Number(0.75), "0.0012".into(), 0),
                ("tone", 1, FeedbackValue::Text, nan.clone(), 0),
                ("bad", 2, FeedbackValue::Error, nan.clone(), 0),
                (
                    "correct",
                    2,
                    FeedbackValue::True,
                    nan,
                    malformed::JUDGE_COST
                ),
            ]
        );
        assert_eq!(
            batch.feedback["1"][0].id,
            0xb94e1df415404dcaacf52300c1bc96a8
        );
    }

    /// A page where one trace's fields have the wrong JSON types still decodes: that trace is
    /// read as malformed (an object for the token usage is read as the usage), the others whole.
    #[test]
    fn a_page_with_odd_types_decodes() {
        let page = r#"{"traces": [
            {"trace_id": 7, "request_time": 12, "execution_duration": null, "state": ["OK"],
             "trace_location": {"mlflow_experiment": {"experiment_id": 1}},
             "trace_metadata": {"mlflow.trace.tokenUsage": {"input_tokens": 3, "output_tokens": 4},
                                "mlflow.trace.cost": 5, "mlflow.traceInputs": {"q": "x"}},
             "request_preview": "long text"},
            {"trace_id": "tr-00000000000000000000000000000abc", "request_time": "2026-12-03T17:24:16Z",
             "execution_duration": "2s", "state": "OK",
             "trace_location": {"mlflow_experiment": {"experiment_id": "1"}}}
        ], "next_page_token": null}"#;
        let p: SearchTracesResponse = serde_json::from_str(page).unwrap();
        let odd = super::record(&p.traces[0]);
        assert_eq!(
            p.traces[0].trace_location.mlflow_experiment.experiment_id,
            "1"
        );
        assert_eq!((odd.input_tokens, odd.output_tokens), (3, 4));
        use super::malformed::*;
        assert_eq!(
            odd.malformed,
            REQUEST_TIME | EXECUTION_DURATION | STATE | COST
        );
        let fine = super::record(&p.traces[1]);
        assert_eq!(
            (fine.id, fine.duration_ms, fine.malformed),
            (0xabc, 2000, 0)
        );
    }
}
