"""The Python baseline of benches/mlflow_real.rs: one full sync of an MLflow server the way a team
would write an exporter from MLflow's documentation (the Python client, `prometheus_client` gauges),
timed and measured in this process; prints one JSON line.

What it does, once, as a scrape-driven exporter would on each scrape (or a loop on each interval):
`mlflow.search_experiments(view_type=ALL)`; then `MlflowClient().search_runs` over all experiment ids
with `run_view_type=ALL`, paged with `page_token` at the documented default of 1 000 runs a page; the
registry through `search_registered_models` and `search_model_versions`, paged the same way. Each run
is counted into gauges as it arrives, and the page dropped. `generate_latest()` at the end renders the
exposition once, as a scrape would.

Why `MlflowClient.search_runs` and not `mlflow.search_runs`: the latter builds a pandas DataFrame of
every run (one column per param, metric and tag key) before anything can be counted, which only adds
time and memory to the same requests; the client's paged list is the documented way to walk all runs.
"""

import argparse
import json
import resource
import time

T_IMPORT = time.monotonic()

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402
from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: E402

ENDED = ("FINISHED", "FAILED", "KILLED")
WINDOWS = {"1d": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}


def sync(page_size, max_pages):
    registry = CollectorRegistry()
    runs_g = Gauge("mlflow_runs", "Runs by current status, in active experiments and not deleted",
                   ["experiment", "status", "team"], registry=registry)
    compute_g = Gauge("mlflow_run_compute_seconds_total",
                      "Wall time of ended runs plus elapsed time of running ones",
                      ["team", "instance_type"], registry=registry)
    users_g = Gauge("mlflow_users", "Distinct users who ever started a run", registry=registry)
    active_g = Gauge("mlflow_active_users", "Distinct users who started a run within the window",
                     ["window"], registry=registry)
    models_g = Gauge("mlflow_registered_models", "Registered models", registry=registry)
    versions_g = Gauge("mlflow_model_versions", "Model versions by stage and status",
                       ["model", "stage", "status"], registry=registry)
    alias_g = Gauge("mlflow_model_alias_version", "Version each alias points at",
                    ["model", "alias"], registry=registry)

    client = MlflowClient()
    now = int(time.time() * 1000)
    experiments = mlflow.search_experiments(view_type=ViewType.ALL)
    names = {e.experiment_id: e.name for e in experiments}
    active_exps = {e.experiment_id for e in experiments if e.lifecycle_stage == "active"}
    ids = list(names)

    users, recent = set(), {w: set() for w in WINDOWS}
    runs_seen, pages, token = 0, 0, None
    while pages < max_pages:
        page = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=page_size,
                                  page_token=token)
        pages += 1
        for run in page:
            info, tags = run.info, run.data.tags
            runs_seen += 1
            team = tags.get("team", "")
            if info.lifecycle_stage == "active" and info.experiment_id in active_exps:
                runs_g.labels(names[info.experiment_id], info.status, team).inc()
            if info.start_time is not None:
                end = info.end_time if info.status in ENDED and info.end_time else now
                compute_g.labels(team, tags.get("instance_type", "")).inc(
                    max(0, end - info.start_time) / 1000)
                users.add(info.user_id)
                for w, span in WINDOWS.items():
                    if info.start_time >= now - span:
                        recent[w].add(info.user_id)
        token = page.token
        if not token:
            break
    users_g.set(len(users))
    for w, s in recent.items():
        active_g.labels(w).set(len(s))

    models, token, reg_pages = 0, None, 0
    while reg_pages < max_pages:
        page = client.search_registered_models(page_token=token)
        reg_pages += 1
        for m in page:
            models += 1
            for alias, version in (m.aliases or {}).items():
                alias_g.labels(m.name, alias).set(int(version))
        token = page.token
        if not token:
            break
    models_g.set(models)

    versions, token = 0, None
    while reg_pages < 2 * max_pages:
        page = client.search_model_versions(page_token=token)
        reg_pages += 1
        for v in page:
            versions += 1
            versions_g.labels(v.name, v.current_stage or "None", v.status).inc()
        token = page.token
        if not token:
            break

    body = generate_latest(registry)
    return {
        "runs": runs_seen,
        "pages": pages,
        "registry_pages": reg_pages,
        "experiments": len(experiments),
        "models": models,
        "versions": versions,
        "exposition_bytes": len(body),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--max-pages", type=int, default=10_000, help="bound on pages per search")
    a = p.parse_args()
    import_s = time.monotonic() - T_IMPORT
    cpu0 = time.process_time()
    t = time.monotonic()
    out = sync(a.page_size, a.max_pages)
    out["seconds"] = round(time.monotonic() - t, 3)
    out["cpu_seconds"] = round(time.process_time() - cpu0, 3)
    out["import_seconds"] = round(import_s, 3)
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
