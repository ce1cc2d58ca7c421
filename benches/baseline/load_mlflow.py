"""Bulk-loads a fresh MLflow SQLite store for benches/mlflow_real.rs: experiments, runs (params, tags,
metric history and latest metrics), registered models, versions, aliases and tags, from a fixed seed,
shaped like the synthetic generator of benches/sync.rs. `--change N` instead changes N runs on a running
server through MLflow's REST API (the "100 runs changed" case).

How the load works: MLflow itself creates the schema (`SqlAlchemyStore(uri, root)` runs all of its
Alembic migrations on an empty database, tracking and registry tables alike), so the tables and
columns are exactly those of the installed MLflow. Then every row is written with sqlite3's
`executemany` in one transaction, with the same values MLflow's own store would write (lifecycle
stages, statuses, `workspace = 'default'`, one `metrics` row per key so a history exists and the same
value in `latest_metrics`). Direct SQL because MLflow's REST API needs three requests a run at best
(create with tags, log a batch, terminate): `--change` measures 0.24-0.29 s a run on the bench
machine, 7-8 hours for 100 000 runs, against ~30 s here. The server is started on the file afterwards
and reads it as its own.

Usage:
  load_mlflow.py --db PATH [--runs 100000] [--experiments 100] [--now-ms MS]   # prints a JSON summary
  MLFLOW_TRACKING_URI=http://... load_mlflow.py --change 100 [--now-ms MS]      # prints what changed
"""

import argparse
import contextlib
import json
import math
import os
import random
import sqlite3
import sys
import time

SEED = 0x5EED
DAY_MS = 86_400_000
SPAN_MS = 90 * DAY_MS
USERS = 2_000
TEAMS = 20
MODELS = 500
VERSIONS_PER_MODEL = 10
INSTANCE_TYPES = [
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "c5.4xlarge",
    "r5.2xlarge",
    "g4dn.xlarge",
    "g5.xlarge",
    "g5.2xlarge",
    "g5.12xlarge",
    "p3.2xlarge",
    "p4d.24xlarge",
    "trn1.32xlarge",
]
ESTIMATORS = [
    "XGBClassifier",
    "LGBMRegressor",
    "RandomForestClassifier",
    "LogisticRegression",
    "TorchTrainer",
    "HFTrainer",
    "CatBoostClassifier",
    "KerasModel",
]
STAGES = ["None", "None", "Staging", "Production", "Archived"]
NAMES = ["brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind"]
ANIMALS = ["owl", "fox", "bee", "cat", "elk", "yak", "ram", "koi"]


def create_schema(db_path, artifacts):
    """Lets MLflow create its own tables (all migrations) in a new SQLite file."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{db_path}", artifacts)
    store.engine.dispose()


def load(db_path, runs, experiments, now):
    rng = random.Random(SEED)
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = OFF")
    started = time.monotonic()
    exp_rows, exp_tags = [], []
    for e in range(experiments):
        eid = e + 1
        created = now - SPAN_MS - e * 3_600_000
        u = e * 7 % USERS
        stage = "deleted" if e % 50 == 49 else "active"
        exp_rows.append(
            (eid, f"/Users/user{u}@example.com/project-{e}/training",
             f"s3://mlflow-artifacts/{eid}", stage, created, created)
        )
        exp_tags += [
            ("team", f"team-{e % TEAMS}", eid),
            ("mlflow.ownerEmail", f"user{u}@example.com", eid),
            ("mlflow.experimentType", "MLFLOW_EXPERIMENT", eid),
        ]

    run_rows, params, tags, metrics, latest = [], [], [], [], []
    finished = []  # (run id, end time) of FINISHED runs, for model versions
    status_counts = {}
    step = SPAN_MS // runs
    t0 = now - SPAN_MS
    lo, hi = math.log(30_000), math.log(6 * 3_600_000)
    for i in range(runs):
        start = t0 + i * step + rng.randrange(step)
        dur = int(math.exp(lo + rng.random() * (hi - lo)))
        zombie = rng.randrange(5_000) == 0
        if zombie or start + dur > now:
            status, end = "RUNNING", None
        else:
            s = rng.randrange(100)
            status = "FINISHED" if s < 80 else "FAILED" if s < 93 else "KILLED"
            end = start + dur
        status_counts[status] = status_counts.get(status, 0) + 1
        exp = rng.randrange(experiments) + 1
        run_id = f"{rng.getrandbits(128):032x}"
        user = f"user{rng.randrange(USERS)}@example.com"
        run_name = f"{rng.choice(NAMES)}-{rng.choice(ANIMALS)}-{rng.randrange(1000)}"
        deleted = i % 40 == 0
        source_name = f"pipelines/project_{exp}/train.py"
        commit = f"{rng.getrandbits(160):040x}"
        run_rows.append(
            (run_id, run_name, "JOB", source_name, "", user, status, start, end, commit,
             "deleted" if deleted else "active", f"s3://mlflow-artifacts/{exp}/{run_id}/artifacts",
             exp, (end or now) if deleted else None)
        )
        if status == "FINISHED":
            finished.append((run_id, end))

        ts = end if end is not None else now - 1_000
        itype = rng.randrange(len(INSTANCE_TYPES))
        gpus = rng.randrange(1, 5) if INSTANCE_TYPES[itype][0] in "gp" else 0
        run_metrics = []
        if status == "FINISHED" or rng.random() < 0.5:
            steps = rng.randrange(1, 200)
            run_metrics += [("accuracy", rng.random(), steps), ("loss", rng.random() * 3, steps),
                            ("val_loss", rng.random() * 3, steps)]
            if rng.random() < 0.5:
                run_metrics += [("f1", rng.random(), steps), ("auc", rng.random(), steps)]
        for g in range(gpus):
            u = rng.random() * 100
            run_metrics += [(f"system/gpu_{g}_utilization_percentage", u, 0),
                            (f"system/gpu_{g}_memory_usage_megabytes", u * 400, 0)]
        if gpus > 0 or rng.random() < 0.5:
            run_metrics += [("system/cpu_utilization_percentage", rng.random() * 100, 0),
                            ("system/system_memory_usage_megabytes", rng.random() * 60_000, 0)]
        for key, value, st in run_metrics:
            metrics.append((key, value, ts, run_id, st, 0))
            latest.append((key, value, ts, st, 0, run_id))

        params += [
            ("estimator", rng.choice(ESTIMATORS), run_id),
            ("learning_rate", f"{rng.random() / 10:.5f}", run_id),
            ("batch_size", str(rng.choice([32, 64, 128, 256])), run_id),
            ("epochs", str(rng.randrange(1, 100)), run_id),
            ("max_depth", str(rng.randrange(2, 16)), run_id),
            ("seed", str(rng.getrandbits(32)), run_id),
            ("optimizer", "adamw", run_id),
            ("dataset", f"s3://datasets/project-{exp}/v{rng.randrange(1, 20)}/train.parquet", run_id),
            ("n_features", str(rng.randrange(10, 500)), run_id),
            ("early_stopping", "True", run_id),
        ]
        tags += [
            ("mlflow.user", user, run_id),
            ("mlflow.runName", run_name, run_id),
            ("mlflow.source.type", "JOB", run_id),
            ("mlflow.source.name", source_name, run_id),
            ("mlflow.source.git.commit", commit, run_id),
            ("mlflow.project.env", "conda", run_id),
        ]
        if i % 7 != 0:
            tags.append(("team", f"team-{rng.randrange(TEAMS)}", run_id))
        if i % 3 != 0:
            tags.append(("instance_type", INSTANCE_TYPES[itype], run_id))
        if status == "FINISHED" and rng.randrange(4) == 0:
            history = [{
                "run_id": run_id, "artifact_path": "model",
                "utc_time_created": "2026-11-01 10:00:00.000000",
                "flavors": {"python_function": {"loader_module": "mlflow.sklearn",
                                                "python_version": "3.11.9"},
                            "sklearn": {"pickled_model": "model.pkl", "sklearn_version": "1.5.2"}},
                "model_uuid": f"{rng.getrandbits(128):032x}", "mlflow_version": "3.17.2",
            }]
            tags.append(("mlflow.log-model.history", json.dumps(history), run_id))

    models, model_tags, versions, aliases = [], [], [], []
    for m in range(MODELS):
        name = f"model-{m:03}"
        created = now - SPAN_MS + m * 600_000
        models.append((name, created, now - 3_600_000, f"Model {m} of team {m % TEAMS}"))
        model_tags.append(("team", f"team-{m % TEAMS}", name))
        for v in range(1, VERSIONS_PER_MODEL + 1):
            run_id, run_end = rng.choice(finished)
            vcreated = run_end + rng.randrange(60_000, DAY_MS)
            updated = vcreated + rng.randrange(7 * DAY_MS)
            if updated > now - 3_600_000:
                updated = now - 3_600_000 - rng.randrange(DAY_MS)
            vcreated = min(vcreated, updated)
            versions.append(
                (name, v, vcreated, updated, "", f"user{m * 13 % USERS}@example.com",
                 rng.choice(STAGES), f"s3://mlflow-artifacts/models/{name}/{v}", run_id, "READY", "")
            )
        aliases.append(("champion", rng.randrange(1, VERSIONS_PER_MODEL + 1), name))
        if rng.random() < 0.5:
            aliases.append(("challenger", VERSIONS_PER_MODEL, name))
        if m % 5 == 0:
            aliases.append(("production", rng.randrange(1, VERSIONS_PER_MODEL + 1), name))

    with con:
        con.executemany(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage,"
            " creation_time, last_update_time) VALUES (?, ?, ?, ?, ?, ?)", exp_rows)
        con.executemany(
            "INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?)", exp_tags)
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
            " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
            " experiment_id, deleted_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_rows)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags)
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)"
            " VALUES (?, ?, ?, ?, ?, ?)", metrics)
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
            " VALUES (?, ?, ?, ?, ?, ?)", latest)
        con.executemany(
            "INSERT INTO registered_models (name, creation_time, last_updated_time, description)"
            " VALUES (?, ?, ?, ?)", models)
        con.executemany(
            "INSERT INTO registered_model_tags (key, value, name) VALUES (?, ?, ?)", model_tags)
        con.executemany(
            "INSERT INTO model_versions (name, version, creation_time, last_updated_time,"
            " description, user_id, current_stage, source, run_id, status, status_message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", versions)
        con.executemany(
            "INSERT INTO registered_model_aliases (alias, version, name) VALUES (?, ?, ?)",
            aliases)
    # Back to the journal mode MLflow's engine expects; the WAL is folded into the file.
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()
    return {
        "experiments": experiments,
        "runs": runs,
        "statuses": status_counts,
        "deleted_runs": sum(1 for r in run_rows if r[10] == "deleted"),
        "params": len(params),
        "tags": len(tags),
        "metrics": len(metrics),
        "models": len(models),
        "versions": len(versions),
        "aliases": len(aliases),
        "db_mib": round(os.path.getsize(db_path) / 2**20, 1),
        "insert_seconds": round(time.monotonic() - started, 2),
    }


def change(n, experiments, now):
    """Creates n runs that start and end within the last minute, over the REST API of the server at
    MLFLOW_TRACKING_URI: 3 requests a run (create with tags, log a metric, terminate)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    rng = random.Random(now)
    ids = []
    for k in range(n):
        exp = str(rng.randrange(experiments) + 1)
        # Experiments e % 50 == 49 are deleted: MLflow refuses runs in them.
        if (int(exp) - 1) % 50 == 49:
            exp = str(int(exp) - 1)
        start = now - 60_000 + rng.randrange(30_000)
        run = client.create_run(
            exp,
            start_time=start,
            tags={
                "mlflow.user": f"user{rng.randrange(USERS)}@example.com",
                "team": f"team-{rng.randrange(TEAMS)}",
                "instance_type": rng.choice(INSTANCE_TYPES),
            },
            run_name=f"changed-{k}",
        )
        rid = run.info.run_id
        client.log_metric(rid, "accuracy", rng.random(), timestamp=now, step=1)
        client.set_terminated(rid, "FINISHED", end_time=start + 20_000 + rng.randrange(10_000))
        ids.append(rid)
    return {"created_and_ended": len(ids), "requests": 3 * len(ids), "run_ids": ids}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="SQLite file to create and load (must not exist)")
    p.add_argument("--artifacts", help="default artifact root (default: beside the file)")
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--experiments", type=int, default=100)
    p.add_argument("--now-ms", type=int, default=None)
    p.add_argument("--change", type=int, default=None, metavar="N",
                   help="change N runs on the server at MLFLOW_TRACKING_URI instead of loading")
    a = p.parse_args()
    now = a.now_ms if a.now_ms is not None else int(time.time() * 1000)
    if a.change is not None:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            sys.exit("--change needs MLFLOW_TRACKING_URI (the running server)")
        # MLflow's client prints a "View run" line per terminated run: keep stdout for the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            result = change(a.change, a.experiments, now)
        print(json.dumps(result))
        return
    if not a.db:
        sys.exit("--db is required to load")
    if os.path.exists(a.db):
        sys.exit(f"{a.db} exists: the load wants a fresh store")
    if a.runs < 1000 or a.experiments < 1:
        sys.exit("--runs must be at least 1000 and --experiments at least 1")
    t = time.monotonic()
    create_schema(a.db, a.artifacts or os.path.join(os.path.dirname(os.path.abspath(a.db)), "artifacts"))
    schema_s = time.monotonic() - t
    summary = load(a.db, a.runs, a.experiments, now)
    summary["schema_seconds"] = round(schema_s, 2)
    summary["total_seconds"] = round(time.monotonic() - t, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
