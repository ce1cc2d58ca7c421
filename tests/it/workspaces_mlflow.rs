//! A real MLflow 3 with `--enable-workspaces`: the client finds the workspaces and reads each one's
//! experiments through the `X-MLFLOW-WORKSPACE` header; the exporter publishes every selected
//! workspace's figures under a `workspace` label and the platform's distinct users apart, picks up
//! a workspace created later, and a server without workspaces says so. MLflow 3's logged models
//! are counted by experiment and status, with their time to registration.

use mlflow_exporter::app::Pipeline;
use mlflow_exporter::config::{FlagOverrides, Settings};
use mlflow_exporter::source::mlflow::MlflowClient;
use mlflow_exporter::sync::Mode;
use serde_json::{json, Value};

use crate::support;
use crate::support::exporter::example_config;
use crate::support::http::http_post;
use crate::support::mlflow::MlflowServer;
use crate::support::now_ms;
use crate::support::scrape::{scrape, Scrape};

/// One REST call to MLflow in `workspace`; its JSON answer, with its status.
fn rest(server: &MlflowServer, workspace: &str, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let r = http_post(
        &server.addr,
        path,
        &[
            ("Content-Type", "application/json"),
            ("X-MLFLOW-WORKSPACE", workspace),
        ],
        body.as_bytes(),
    )
    .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn client(server: &MlflowServer) -> MlflowClient {
    let mut s = Settings::default();
    s.mlflow.tracking_uri = server.url.clone();
    MlflowClient::new(&s.mlflow, None).unwrap()
}

async fn experiment_names(c: &MlflowClient) -> Vec<String> {
    let mut names: Vec<String> = c
        .experiments()
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn each_workspace_is_listed_and_read_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start_with(dir, 1, &["--enable-workspaces"], &[]);
    let (status, _) = rest(
        &server,
        "default",
        "/api/3.0/mlflow/workspaces",
        json!({"name": "team-b"}),
    );
    assert_eq!(status, 201, "{}", server.log());
    let create = |ws: &str, name: &str| {
        let (status, answer) = rest(
            &server,
            ws,
            "/api/2.0/mlflow/experiments/create",
            json!({ "name": name }),
        );
        assert_eq!(status, 200, "{answer}");
    };
    // The same name in two workspaces: names are unique only inside one.
    create("default", "exp-shared");
    create("team-b", "exp-shared");
    create("team-b", "exp-b");

    let c = client(&server);
    assert!(c.server_info().await.unwrap().unwrap().workspaces_enabled);
    assert_eq!(c.workspaces().await.unwrap(), ["default", "team-b"]);
    assert_eq!(
        experiment_names(&c.in_workspace("team-b")).await,
        ["exp-b", "exp-shared"]
    );
    // No header reads `default`, as naming it does.
    assert_eq!(experiment_names(&c).await, ["Default", "exp-shared"]);
    assert_eq!(
        experiment_names(&c.in_workspace("default")).await,
        ["Default", "exp-shared"]
    );
    let err = c.in_workspace("nope").experiments().await.unwrap_err();
    assert_eq!(err.reason(), "client_error");
    assert!(
        err.to_string().contains("Workspace 'nope' not found"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_without_workspaces_says_so() {
    let server = MlflowServer::start();
    let info = client(&server).server_info().await.unwrap().unwrap();
    assert!(!info.workspaces_enabled);
}

/// The example config against `server`, its store in `store`.
fn settings(server: &MlflowServer, store: &tempfile::TempDir) -> Settings {
    let env = [("MLFLOW_TRACKING_URI".to_string(), server.url.clone())].into();
    let flags = FlagOverrides {
        storage_path: Some(store.path().join("events.db").display().to_string()),
        ..FlagOverrides::default()
    };
    Settings::load(Some(&example_config()), &env, &flags).unwrap()
}

/// One REST call that must succeed; its answer.
fn ok(server: &MlflowServer, workspace: &str, path: &str, body: Value) -> Value {
    let (status, answer) = rest(server, workspace, path, body);
    assert!(status == 200 || status == 201, "{path}: {status} {answer}");
    answer
}

/// An experiment in `workspace` with a finished run of an hour by each of `users`, the last one
/// registered as version 1 of `model` with alias `champion`. Returns the experiment's id.
fn seed(
    server: &MlflowServer,
    workspace: &str,
    experiment: &str,
    users: &[&str],
    t: i64,
) -> String {
    let api = "/api/2.0/mlflow";
    let id = ok(
        server,
        workspace,
        &format!("{api}/experiments/create"),
        json!({"name": experiment}),
    )["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = String::new();
    for (i, user) in users.iter().enumerate() {
        let start = t - 3 * HOUR + i as i64 * 60_000;
        let run = ok(
            server,
            workspace,
            &format!("{api}/runs/create"),
            json!({"experiment_id": id, "user_id": user, "start_time": start}),
        );
        last = run["run"]["info"]["run_id"].as_str().unwrap().to_string();
        ok(
            server,
            workspace,
            &format!("{api}/runs/update"),
            json!({"run_id": last, "status": "FINISHED", "end_time": start + HOUR}),
        );
    }
    ok(
        server,
        workspace,
        &format!("{api}/registered-models/create"),
        json!({"name": "churn"}),
    );
    ok(
        server,
        workspace,
        &format!("{api}/model-versions/create"),
        json!({"name": "churn", "source": format!("runs:/{last}/model"), "run_id": last}),
    );
    ok(
        server,
        workspace,
        &format!("{api}/registered-models/alias"),
        json!({"name": "churn", "alias": "champion", "version": "1"}),
    );
    id
}

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selected_workspace_is_published_under_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        MlflowServer::start_with(dir, 1, &["--enable-workspaces"], &[])
    });
    let t = now_ms() / 1000 * 1000;
    let workspaces = "/api/3.0/mlflow/workspaces";
    for w in ["team-b", "sandbox"] {
        ok(&server, "default", workspaces, json!({ "name": w }));
    }
    // carol works in two workspaces; zed only in the excluded one.
    let exp_default = seed(
        &server,
        "default",
        "exp-shared",
        &["alice", "bob", "carol"],
        t,
    );
    let exp_b = seed(
        &server,
        "team-b",
        "exp-shared",
        &["carol", "dave", "erin"],
        t,
    );
    seed(&server, "sandbox", "exp-s", &["zed"], t);

    let store = tempfile::tempdir().unwrap();
    let mut settings = settings(&server, &store);
    settings.mlflow.workspaces.exclude = vec!["sandbox".into()];
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    let report = pipeline.cycle(t).await.unwrap();
    assert_eq!((report.mode, report.workspaces), (Mode::Full, 2));
    assert!(report.failed.is_empty());
    let s = scrape(&pipeline.publisher);

    // Distinct users per workspace, and the platform's: carol is one person.
    let ws = |w: &'static str| ("workspace", w);
    assert_eq!(s.get("mlflow_users", &[ws("default")]), 3.0);
    assert_eq!(s.get("mlflow_users", &[ws("team-b")]), 3.0);
    assert_eq!(s.get("mlflow_platform_users", &[]), 5.0);
    assert_eq!(
        s.get("mlflow_active_users", &[ws("team-b"), ("window", "1d")]),
        3.0
    );
    assert_eq!(
        s.get("mlflow_platform_active_users", &[("window", "1d")]),
        5.0
    );
    // Activation: the last user of each workspace registered a version.
    assert_eq!(s.get("mlflow_activated_users", &[ws("default")]), 1.0);
    assert_eq!(s.get("mlflow_activated_users", &[ws("team-b")]), 1.0);
    assert_eq!(s.get("mlflow_platform_activated_users", &[]), 2.0);
    // Same-named experiments and models stay apart.
    for w in ["default", "team-b"] {
        let labels = [ws(w), ("experiment", "exp-shared"), ("status", "FINISHED")];
        assert_eq!(s.get("mlflow_runs", &labels), 3.0, "{w}");
        // The example config's extra label, empty: these runs set no estimator.
        let labels = [labels[0], labels[1], labels[2], ("estimator", "")];
        assert_eq!(s.get("mlflow_runs_ended_total", &labels), 3.0, "{w}");
        let labels = [ws(w), ("model", "churn"), ("alias", "champion")];
        assert_eq!(s.get("mlflow_model_alias_version", &labels), 1.0, "{w}");
        let labels = [ws(w), ("reason", "auth")];
        assert_eq!(s.get("mlflow_exporter_sync_errors_total", &labels), 0.0);
    }
    // What each workspace holds (default has its Default experiment too), and created by team.
    let active = |w| [ws(w), ("lifecycle_stage", "active")];
    assert_eq!(s.get("mlflow_experiments", &active("default")), 2.0);
    assert_eq!(s.get("mlflow_experiments", &active("team-b")), 1.0);
    assert_eq!(s.get("mlflow_registered_models", &[ws("team-b")]), 1.0);
    let created = [ws("team-b"), ("team", "")];
    assert_eq!(s.get("mlflow_experiments_created_total", &created), 1.0);
    assert_eq!(
        s.get("mlflow_registered_models_created_total", &created),
        1.0
    );
    // Nothing of the excluded workspace.
    assert!(!format!("{:?}", s.family("mlflow_runs")).contains("sandbox"));
    assert_eq!(s.get("mlflow_exporter_snapshot_runs", &[]), 6.0);

    // A workspace created since is read at the next cycle, without a restart.
    ok(&server, "default", workspaces, json!({"name": "team-c"}));
    seed(&server, "team-c", "exp-c", &["carol", "frank"], t);
    let report = pipeline.cycle(t + 60_000).await.unwrap();
    assert_eq!((report.mode, report.workspaces), (Mode::Incremental, 3));
    let s = scrape(&pipeline.publisher);
    assert_eq!(s.get("mlflow_users", &[ws("team-c")]), 2.0);
    assert_eq!(s.get("mlflow_platform_users", &[]), 6.0);
    let labels = [
        ws("team-c"),
        ("experiment", "exp-c"),
        ("status", "FINISHED"),
        ("estimator", ""),
    ];
    assert_eq!(s.get("mlflow_runs_ended_total", &labels), 2.0);

    // Each workspace's churn@champion moves to a version 2 (made from its experiment's first
    // run): two deployments, one per workspace, never of one model.
    for (w, exp) in [("default", &exp_default), ("team-b", &exp_b)] {
        let runs = ok(
            &server,
            w,
            "/api/2.0/mlflow/runs/search",
            json!({"experiment_ids": [exp], "max_results": 1}),
        );
        let run_id = runs["runs"][0]["info"]["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        ok(
            &server,
            w,
            "/api/2.0/mlflow/model-versions/create",
            json!({"name": "churn", "source": format!("runs:/{run_id}/model"), "run_id": run_id}),
        );
        ok(
            &server,
            w,
            "/api/2.0/mlflow/registered-models/alias",
            json!({"name": "churn", "alias": "champion", "version": "2"}),
        );
    }
    pipeline.cycle(t + 120_000).await.unwrap();
    let s = scrape(&pipeline.publisher);
    for w in ["default", "team-b"] {
        let target = [ws(w), ("model", "churn"), ("alias", "champion")];
        assert_eq!(s.get("mlflow_model_deployments_total", &target), 1.0, "{w}");
        assert_eq!(s.get("mlflow_model_alias_version", &target), 2.0, "{w}");
    }
    // team-c and its champion were made after the exporter's first cycle: that was a deployment,
    // and nothing moved since.
    let c = [ws("team-c"), ("model", "churn"), ("alias", "champion")];
    assert_eq!(s.get("mlflow_model_deployments_total", &c), 1.0);
    // The history keeps the three churn models apart.
    let models: std::collections::BTreeSet<String> = s
        .family("mlflow_model_deployments_total")
        .keys()
        .map(|l| format!("{}/{}", l["workspace"], l["model"]))
        .collect();
    assert_eq!(
        models.into_iter().collect::<Vec<_>>(),
        ["default/churn", "team-b/churn", "team-c/churn"]
    );
}

const SECRET: &str = "whsec-ws-never-print";

/// MLflow's webhook of a second workspace: its alias move is recorded as that workspace's model,
/// not as the same-named model of `default`; a prompt's alias move there, as a deployment of that
/// workspace's prompt.
#[test]
fn a_webhook_from_a_second_workspace_lands_in_its_own_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let mlflow = MlflowServer::start_with(
        dir,
        1,
        &["--enable-workspaces"],
        &[
            ("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true"),
            ("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https"),
            ("MLFLOW_WEBHOOK_CACHE_TTL", "0"),
        ],
    );
    let t = now_ms() / 1000 * 1000;
    ok(
        &mlflow,
        "default",
        "/api/3.0/mlflow/workspaces",
        json!({"name": "team-b"}),
    );
    seed(&mlflow, "default", "exp", &["alice"], t);
    let exp_b = seed(&mlflow, "team-b", "exp", &["bob"], t);
    let config = support::write_file(
        mlflow.dir.path(),
        "exporter.yaml",
        &format!(
            "webhooks:\n  mlflow: {{enabled: true, secret: {SECRET}}}\n\
             probes:\n  interval: 2s\n  timeout: 1s\n  targets:\n  - {{name: churn-b, url: {}/health, method: GET, model: churn, alias: champion, workspace: team-b}}\n",
            mlflow.url
        ),
    );
    let mut exporter = support::exporter::ExporterProcess::start(
        mlflow.dir.path(),
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--mlflow.sync-interval=1h",
        ],
        &[("MLFLOW_TRACKING_URI", &mlflow.url)],
    );
    exporter.wait_ready();
    let receiver = format!("http://{}/api/v1/webhooks/mlflow", exporter.addr);
    ok(
        &mlflow,
        "team-b",
        "/api/2.0/mlflow/webhooks",
        json!({
            "name": "exporter", "url": receiver, "secret": SECRET, "status": "ACTIVE",
            "events": [
                {"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"},
                {"entity": "PROMPT_ALIAS", "action": "CREATED"},
            ],
        }),
    );
    // A new version of team-b's churn, made from a run of an hour, becomes its champion.
    let api = "/api/2.0/mlflow";
    let start = t - 2 * HOUR;
    let run = ok(
        &mlflow,
        "team-b",
        &format!("{api}/runs/create"),
        json!({"experiment_id": exp_b, "user_id": "bob", "start_time": start}),
    );
    let run_id = run["run"]["info"]["run_id"].as_str().unwrap().to_string();
    ok(
        &mlflow,
        "team-b",
        &format!("{api}/runs/update"),
        json!({"run_id": run_id, "status": "FINISHED", "end_time": start + HOUR}),
    );
    ok(
        &mlflow,
        "team-b",
        &format!("{api}/model-versions/create"),
        json!({"name": "churn", "source": format!("runs:/{run_id}/model"), "run_id": run_id}),
    );
    ok(
        &mlflow,
        "team-b",
        &format!("{api}/registered-models/alias"),
        json!({"name": "churn", "alias": "champion", "version": "2"}),
    );
    let target = |w| {
        support::scrape::to_labels(&[("workspace", w), ("model", "churn"), ("alias", "champion")])
    };
    support::http::wait_until(
        std::time::Duration::from_secs(30),
        "team-b's deployment in /metrics",
        || {
            exporter
                .scrape()
                .family("mlflow_model_deployments_total")
                .get(&target("team-b"))
                == Some(&1.0)
        },
    );
    let s = exporter.scrape();
    // A probe of team-b's churn carries its workspace, as the registry's series do.
    let probed = [
        ("probe", "churn-b"),
        ("workspace", "team-b"),
        ("model", "churn"),
        ("alias", "champion"),
    ];
    support::http::wait_until(
        std::time::Duration::from_secs(20),
        "the probe of team-b's churn",
        || {
            exporter
                .scrape()
                .family("mlflow_probe_success")
                .get(&support::scrape::to_labels(&probed))
                == Some(&1.0)
        },
    );
    let deployments = s.family("mlflow_model_deployments_total");
    assert_eq!(deployments.get(&target("default")), Some(&0.0));
    // The version was read from team-b's registry: its lead time is the run's start to the move.
    let lead = s.get(
        "mlflow_model_last_lead_time_seconds",
        &[
            ("workspace", "team-b"),
            ("model", "churn"),
            ("alias", "champion"),
        ],
    );
    // From the run's start (two hours before T) to MLflow's time of the move, within this test.
    assert!((7200.0..7200.0 + 60.0).contains(&lead), "{lead}");

    // A prompt of team-b (registered as prompts are: a tagged model) gets a serving alias: MLflow sends
    // `prompt_alias.created`, a deployment of the prompt, not of a model.
    let tag = |k: &str, v: &str| json!({"key": k, "value": v});
    ok(
        &mlflow,
        "team-b",
        &format!("{api}/registered-models/create"),
        json!({"name": "qa", "tags": [tag("mlflow.prompt.is_prompt", "true"), tag("team", "nlp")]}),
    );
    let version = ok(
        &mlflow,
        "team-b",
        &format!("{api}/model-versions/create"),
        json!({"name": "qa", "source": "s3://prompts/qa", "tags": [tag("mlflow.prompt.text", "Answer {{q}}")]}),
    );
    let created: f64 = version["model_version"]["creation_timestamp"]
        .as_str()
        .map_or_else(
            || {
                version["model_version"]["creation_timestamp"]
                    .as_f64()
                    .unwrap()
            },
            |v| v.parse().unwrap(),
        );
    ok(
        &mlflow,
        "team-b",
        &format!("{api}/registered-models/alias"),
        json!({"name": "qa", "alias": "champion", "version": "1"}),
    );
    let prompt = support::scrape::to_labels(&[
        ("workspace", "team-b"),
        ("prompt", "qa"),
        ("alias", "champion"),
    ]);
    support::http::wait_until(
        std::time::Duration::from_secs(30),
        "team-b's prompt deployment in /metrics",
        || {
            exporter
                .scrape()
                .family("mlflow_prompt_deployments_total")
                .get(&prompt)
                == Some(&1.0)
        },
    );
    let s = exporter.scrape();
    let models = format!("{:?}", s.family("mlflow_model_deployments_total"));
    assert!(!models.contains("qa"), "{models}");
    // Its lead time: the version's creation (read from team-b's registry) to MLflow's time of the
    // move, within this test.
    let by_team = [("workspace", "team-b"), ("team", "nlp"), ("prompt", "qa")];
    assert_eq!(
        s.get("mlflow_prompt_lead_time_seconds_count", &by_team),
        1.0
    );
    let lead = s.get("mlflow_prompt_lead_time_seconds_sum", &by_team);
    let since = now_ms() as f64 - created;
    assert!(
        lead >= 0.0 && lead * 1000.0 <= since,
        "{lead} s, {since} ms"
    );
}

/// MLflow 3's logged models: by experiment and status, created, and each one's time from its
/// creation to its first registration as a model version, against what MLflow recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_models_by_status_and_their_time_to_registration() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let script = "import warnings; warnings.simplefilter('ignore'); import mlflow\n\
        from mlflow.entities import LoggedModelStatus\n\
        c = mlflow.MlflowClient()\n\
        e = c.create_experiment('lm')\n\
        r = c.create_run(e)\n\
        ready = c.create_logged_model(e, name='ready', source_run_id=r.info.run_id)\n\
        c.finalize_logged_model(ready.model_id, LoggedModelStatus.READY)\n\
        c.create_logged_model(e, name='pending')\n\
        failed = c.create_logged_model(e, name='failed')\n\
        c.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)\n\
        c.create_registered_model('reg')\n\
        v = c.create_model_version('reg', source='models:/' + ready.model_id, run_id=r.info.run_id, model_id=ready.model_id)\n\
        print('TIMES', ready.creation_timestamp, v.creation_timestamp)\n\
        mlflow.genai.register_prompt(name='qa', template='Answer {{q}}')\n\
        mlflow.set_experiment('lm')\n\
        with mlflow.start_run():\n\
        \x20   mlflow.genai.load_prompt('prompts:/qa/1')\n";
    let printed = tokio::task::block_in_place(|| python(&server, script));
    let times: Vec<i64> = printed
        .lines()
        .find_map(|l| l.strip_prefix("TIMES "))
        .unwrap_or_else(|| panic!("no TIMES line in {printed:?}"))
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();

    let store = tempfile::tempdir().unwrap();
    let settings = settings(&server, &store);
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    pipeline.cycle(t).await.unwrap();
    let s = scrape(&pipeline.publisher);
    for status in ["READY", "PENDING", "FAILED_UPLOAD"] {
        let labels = [("experiment", "lm"), ("status", status)];
        assert_eq!(s.get("mlflow_logged_models", &labels), 1.0, "{status}");
    }
    let created = [("experiment", "lm")];
    assert_eq!(s.get("mlflow_logged_models_created_total", &created), 3.0);
    let h = "mlflow_logged_model_time_to_registration_seconds";
    assert_eq!(s.get(&format!("{h}_count"), &[]), 1.0);
    let want = (times[1] - times[0]) as f64 / 1000.0;
    assert_eq!(s.get(&format!("{h}_sum"), &[]), want);
    // The run that loaded a prompt: its user used the prompts feature.
    let prompts = [("feature", "prompts"), ("window", "1d")];
    assert_eq!(s.get("mlflow_feature_users", &prompts), 1.0);
    // Counted once: another cycle observes nothing more.
    pipeline.syncer.full(t + 60_000).await.unwrap();
    pipeline.publish(t + 60_000).await;
    let s = scrape(&pipeline.publisher);
    assert_eq!(s.get(&format!("{h}_count"), &[]), 1.0);
    assert_eq!(s.get("mlflow_logged_models_created_total", &created), 3.0);
}

/// Runs `script` with the MLflow SDK against `server`; its standard output.
fn python(server: &MlflowServer, script: &str) -> String {
    server.python(script)
}

/// MLflow 3's prompt registry: prompts and versions by team, apart from the models, and moves of
/// their serving aliases recorded in the delivery history as deployments of prompts: rollbacks,
/// lead time from the version's creation and time to restore, exact, across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_their_alias_moves_are_counted_apart_from_models() {
    let server = tokio::task::block_in_place(MlflowServer::start);
    let sdk = "import warnings; warnings.simplefilter('ignore'); import mlflow\n";
    let printed = tokio::task::block_in_place(|| {
        python(
            &server,
            &format!(
                "{sdk}mlflow.genai.register_prompt(name='qa', template='Answer {{{{q}}}}', tags={{'team': 'nlp'}})\n\
                 qa2 = mlflow.genai.register_prompt(name='qa', template='Answer well {{{{q}}}}')\n\
                 mlflow.genai.set_prompt_alias('qa', alias='production', version=1)\n\
                 sum1 = mlflow.genai.register_prompt(name='sum', template='Sum up {{{{t}}}}')\n\
                 mlflow.MlflowClient().create_registered_model('churn', tags={{'team': 'nlp'}})\n\
                 print('CREATED', mlflow.genai.load_prompt('prompts:/qa/1').creation_timestamp, \
                 qa2.creation_timestamp, sum1.creation_timestamp)\n"
            ),
        )
    });
    let created: Vec<i64> = printed
        .lines()
        .find_map(|l| l.strip_prefix("CREATED "))
        .unwrap_or_else(|| panic!("no CREATED line in {printed:?}"))
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let store = tempfile::tempdir().unwrap();
    let mut settings = settings(&server, &store);
    // Every cycle below reads the prompt registry.
    settings.mlflow.prompts_interval = std::time::Duration::from_secs(1);
    // The next whole second: never before the prompts' creation, which MLflow stamps to the ms
    // (flooring it raced a script that ends within the second of qa's version 1).
    let t = (now_ms() / 1000 + 1) * 1000;
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    pipeline.cycle(t).await.unwrap();
    let s = scrape(&pipeline.publisher);
    let team = |t: &'static str| [("team", t)];
    assert_eq!(s.get("mlflow_prompts", &team("nlp")), 1.0);
    assert_eq!(s.get("mlflow_prompts", &team("")), 1.0);
    assert_eq!(s.get("mlflow_prompt_versions", &team("nlp")), 2.0);
    assert_eq!(s.get("mlflow_prompt_versions", &team("")), 1.0);
    assert_eq!(s.get("mlflow_prompts_created_total", &team("nlp")), 1.0);
    assert_eq!(
        s.get("mlflow_prompt_versions_created_total", &team("nlp")),
        2.0
    );
    // The serving alias the first cycle finds is where it stands: its series exist at 0, and it
    // was deployed at the latest when its version was created.
    let qa = [("prompt", "qa"), ("alias", "production")];
    let sum = [("prompt", "sum"), ("alias", "production")];
    assert_eq!(s.get("mlflow_prompt_deployments_total", &qa), 0.0);
    assert_eq!(s.get("mlflow_prompt_rollbacks_total", &qa), 0.0);
    assert_eq!(
        s.get("mlflow_prompt_deployed_timestamp_seconds", &qa),
        created[0] as f64 / 1000.0
    );
    let qa_team = [("team", "nlp"), ("prompt", "qa")];
    let sum_team = [("team", ""), ("prompt", "sum")];
    let lead = "mlflow_prompt_lead_time_seconds";
    assert_eq!(s.get(&format!("{lead}_count"), &qa_team), 0.0);
    assert!(s.family("mlflow_prompt_deployments_total").len() == 1);
    // Prompts are not models: the registry holds one model, churn.
    assert_eq!(s.get("mlflow_registered_models", &[]), 1.0);
    assert_eq!(
        s.get("mlflow_registered_models_created_total", &team("nlp")),
        1.0
    );

    // qa's production moves to version 2 and sum gets one: two deployments of prompts. An alias
    // that does not serve (`staging`) is no deployment.
    tokio::task::block_in_place(|| {
        python(
            &server,
            &format!(
                "{sdk}mlflow.genai.set_prompt_alias('qa', alias='production', version=2)\n\
                 mlflow.genai.set_prompt_alias('sum', alias='production', version=1)\n\
                 mlflow.genai.set_prompt_alias('sum', alias='staging', version=1)\n"
            ),
        )
    });
    let t1 = t + 60_000;
    pipeline.cycle(t1).await.unwrap();
    let s = scrape(&pipeline.publisher);
    assert_eq!(s.get("mlflow_prompt_deployments_total", &qa), 1.0);
    assert_eq!(s.get("mlflow_prompt_deployments_total", &sum), 1.0);
    assert_eq!(s.family("mlflow_prompt_deployments_total").len(), 2);
    assert_eq!(
        s.get("mlflow_prompt_deployed_timestamp_seconds", &qa),
        t1 as f64 / 1000.0
    );
    // Lead time: the version's creation to the cycle that saw it serving.
    assert_eq!(s.get(&format!("{lead}_count"), &qa_team), 1.0);
    assert_eq!(
        s.get(&format!("{lead}_sum"), &qa_team),
        (t1 - created[1]) as f64 / 1000.0
    );
    assert_eq!(s.get(&format!("{lead}_count"), &sum_team), 1.0);
    assert_eq!(
        s.get(&format!("{lead}_sum"), &sum_team),
        (t1 - created[2]) as f64 / 1000.0
    );
    // Nor deployments of models.
    let models = format!("{:?}", s.family("mlflow_model_deployments_total"));
    assert!(
        !models.contains("qa") && !models.contains("sum"),
        "{models}"
    );

    // qa's production goes back to version 1: a rollback, restoring service after a minute.
    tokio::task::block_in_place(|| {
        python(
            &server,
            &format!("{sdk}mlflow.genai.set_prompt_alias('qa', alias='production', version=1)\n"),
        )
    });
    let t2 = t1 + 60_000;
    pipeline.cycle(t2).await.unwrap();
    let check = |s: &support::scrape::Scrape| {
        assert_eq!(s.get("mlflow_prompt_deployments_total", &qa), 2.0);
        assert_eq!(s.get("mlflow_prompt_rollbacks_total", &qa), 1.0);
        assert_eq!(s.get("mlflow_prompt_rollbacks_total", &sum), 0.0);
        // A rollback is no change: lead time observes nothing more.
        assert_eq!(s.get(&format!("{lead}_count"), &qa_team), 1.0);
        let restore = "mlflow_prompt_rollback_recovery_seconds";
        assert_eq!(s.get(&format!("{restore}_count"), &qa_team), 1.0);
        assert_eq!(s.get(&format!("{restore}_sum"), &qa_team), 60.0);
    };
    check(&scrape(&pipeline.publisher));

    // After a restart nothing is counted again.
    pipeline.recorder.store().close().await;
    drop(pipeline);
    let mut pipeline = Pipeline::open(&settings, t2 + 60_000).await.unwrap();
    pipeline.cycle(t2 + 60_000).await.unwrap();
    let s = scrape(&pipeline.publisher);
    check(&s);
    assert_eq!(s.get("mlflow_prompt_deployments_total", &sum), 1.0);
    assert_eq!(
        s.get("mlflow_prompt_versions_created_total", &team("nlp")),
        2.0
    );
}

/// A finished trace of `experiment_id` in `workspace`, logged as MLflow's SDK logs one
/// (`StartTraceV3`), with token usage and an end user.
fn log_trace(server: &MlflowServer, workspace: &str, experiment_id: &str, n: u128, state: &str) {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let info = json!({
        "trace_id": format!("tr-{n:032x}"),
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}},
        "request_time": time,
        "execution_duration": "0.250s",
        "state": state,
        "trace_metadata": {
            "mlflow.trace.tokenUsage": "{\"input_tokens\": 3, \"output_tokens\": 4, \"total_tokens\": 7}",
            "mlflow.trace.user": format!("user-{}", n % 2),
            "mlflow.modelId": "m-00000000000000000000000000000001",
        },
    });
    ok(
        server,
        workspace,
        "/api/3.0/mlflow/traces",
        json!({"trace": {"trace_info": info}}),
    );
}

/// A user's feedback on trace `n` of `workspace` (MLflow's `CreateAssessment`, as
/// `mlflow.log_feedback` sends it).
fn log_feedback(server: &MlflowServer, workspace: &str, n: u128, value: bool) {
    let trace = format!("tr-{n:032x}");
    ok(
        server,
        workspace,
        &format!("/api/3.0/mlflow/traces/{trace}/assessments"),
        json!({"assessment": {
            "assessment_name": "helpful", "trace_id": trace,
            "source": {"source_type": "HUMAN", "source_id": "u"},
            "feedback": {"value": value},
        }}),
    );
}

/// Two workspaces' GenAI apps of the same name: each workspace's traces (and their feedback, and
/// the logged model they name) are read with its header and counted under its own `workspace`
/// label, never added together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_of_two_workspaces_are_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| {
        MlflowServer::start_with(dir, 1, &["--enable-workspaces"], &[])
    });
    ok(
        &server,
        "default",
        "/api/3.0/mlflow/workspaces",
        json!({"name": "team-b"}),
    );
    let create = |workspace: &str| {
        ok(
            &server,
            workspace,
            "/api/2.0/mlflow/experiments/create",
            json!({"name": "chat"}),
        )["experiment_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (create("default"), create("team-b"));
    tokio::task::block_in_place(|| {
        log_trace(&server, "default", &a, 1, "OK");
        log_trace(&server, "default", &a, 2, "ERROR");
        log_trace(&server, "team-b", &b, 3, "OK");
        log_feedback(&server, "default", 1, true);
        log_feedback(&server, "team-b", 3, false);
    });
    let store = tempfile::tempdir().unwrap();
    let settings = settings(&server, &store);
    let t = now_ms();
    let mut pipeline = Pipeline::open(&settings, t).await.unwrap();
    let report = pipeline.cycle(t).await.unwrap();
    assert_eq!(report.traces_read, 3);
    let s = scrape(&pipeline.publisher);
    let traces = |w: &'static str, state: &'static str| {
        [("workspace", w), ("experiment", "chat"), ("state", state)]
    };
    assert_eq!(s.get("mlflow_traces_total", &traces("default", "OK")), 1.0);
    assert_eq!(
        s.get("mlflow_traces_total", &traces("default", "ERROR")),
        1.0
    );
    assert_eq!(s.get("mlflow_traces_total", &traces("team-b", "OK")), 1.0);
    assert_eq!(
        s.get("mlflow_traces_total", &traces("team-b", "ERROR")),
        0.0
    );
    let tokens = |w: &'static str| {
        [
            ("workspace", w),
            ("experiment", "chat"),
            ("token_type", "output"),
        ]
    };
    assert_eq!(s.get("mlflow_trace_tokens_total", &tokens("default")), 8.0);
    assert_eq!(s.get("mlflow_trace_tokens_total", &tokens("team-b")), 4.0);
    let users = |w: &'static str| [("workspace", w), ("experiment", "chat"), ("window", "1d")];
    assert_eq!(s.get("mlflow_app_active_users", &users("default")), 2.0);
    assert_eq!(s.get("mlflow_app_active_users", &users("team-b")), 1.0);
    let again = |s: &Scrape| {
        let feedback = |w: &'static str, value: &'static str| {
            [
                ("workspace", w),
                ("experiment", "chat"),
                ("name", "helpful"),
                ("source_type", "HUMAN"),
                ("value", value),
            ]
        };
        let fam = "mlflow_trace_feedback_total";
        assert_eq!(s.get(fam, &feedback("default", "true")), 1.0);
        assert_eq!(s.get(fam, &feedback("default", "false")), 0.0);
        assert_eq!(s.get(fam, &feedback("team-b", "true")), 0.0);
        assert_eq!(s.get(fam, &feedback("team-b", "false")), 1.0);
        // A logged model the exporter has not read is named by its id.
        let model = |w: &'static str, state: &'static str| {
            [
                ("workspace", w),
                ("experiment", "chat"),
                ("logged_model", "m-00000000000000000000000000000001"),
                ("traffic", "production"),
                ("state", state),
            ]
        };
        let fam = "mlflow_logged_model_traces_total";
        assert_eq!(s.get(fam, &model("default", "OK")), 1.0);
        assert_eq!(s.get(fam, &model("default", "ERROR")), 1.0);
        assert_eq!(s.get(fam, &model("team-b", "OK")), 1.0);
        assert_eq!(s.get("mlflow_traces_total", &traces("default", "OK")), 1.0);
        assert_eq!(s.get("mlflow_traces_total", &traces("team-b", "OK")), 1.0);
    };
    again(&s);
    // Read again a minute later: nothing counted twice.
    pipeline.cycle(t + 60_000).await.unwrap();
    again(&scrape(&pipeline.publisher));
}
