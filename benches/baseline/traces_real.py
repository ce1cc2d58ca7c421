"""Traces on a real MLflow 3 (issue 18): loads N traces into a new experiment `bulk-N` through
MLflow's StartTraceV3 (one a minute from 2026-11-01, every 20th an ERROR, token usage, user and
session), then times two ways of reading them: paging through `traces/search` (500 a page, as the
exporter does; the answers decoded, so an upper bound of the download floor) and three
server-side aggregates of `traces/metrics` (count, token sum, p99 latency).

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 .venv/bin/python benches/baseline/traces_real.py 20000

Then the exporter's first sync of the same server:
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 target/release/mlflow-exporter --storage.path /tmp/t.db
and its log line `sync with MLflow done ... traces_read=… seconds=…`.
"""
import json, sys, time, requests, datetime
import os
base = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
s = requests.Session()
n = int(sys.argv[1])
r = s.post(base + "/api/2.0/mlflow/experiments/create", json={"name": "bulk-%d" % n})
exp = r.json()["experiment_id"]
t0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
start = time.time()
for i in range(n):
    ts = (t0 + datetime.timedelta(seconds=60 * i)).isoformat().replace("+00:00", "Z")
    info = {"trace_id": "tr-%032x" % (0xb000000 + i + n * 1000000), "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}},
            "request_time": ts, "execution_duration": "%d.%03ds" % (i % 5, i % 1000), "state": "ERROR" if i % 20 == 0 else "OK",
            "trace_metadata": {"mlflow.trace.tokenUsage": json.dumps({"input_tokens": i % 100, "output_tokens": i % 50, "total_tokens": i % 100 + i % 50}),
                               "mlflow.trace.user": "u%d" % (i % 300), "mlflow.trace.session": "s%d" % (i // 4)}}
    r = s.post(base + "/api/3.0/mlflow/traces", json={"trace": {"trace_info": info}})
    assert r.status_code == 200, r.text
print("loaded", n, "in %.1f s" % (time.time() - start))
loc = [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}}]
for rep in range(2):
    start = time.time(); tok = None; pages = 0; got = 0; nbytes = 0
    while True:
        body = {"locations": loc, "max_results": 500, "order_by": ["timestamp_ms ASC"], "page_token": tok}
        r = s.post(base + "/api/3.0/mlflow/traces/search", json=body)
        nbytes += len(r.content); d = r.json(); pages += 1; got += len(d.get("traces", []))
        tok = d.get("next_page_token")
        if not tok: break
    page_s = time.time() - start
    start = time.time()
    m = []
    for metric, aggs in [("trace_count", [{"aggregation_type": "COUNT"}]), ("total_tokens", [{"aggregation_type": "SUM"}]),
                         ("latency", [{"aggregation_type": "PERCENTILE", "percentile_value": 99}])]:
        r = s.post(base + "/api/3.0/mlflow/traces/metrics", json={"experiment_ids": [exp], "view_type": "TRACES",
                   "metric_name": metric, "aggregations": aggs})
        m.append(r.json())
    metrics_s = time.time() - start
    print("paging: %d traces, %d pages, %.1f MiB, %.2f s; traces/metrics (count, tokens sum, p99): %.3f s -> %s" % (
        got, pages, nbytes / 2**20, page_s, metrics_s, json.dumps([x.get("data_points", x) for x in m])[:300]))
