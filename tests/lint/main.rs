//! The repository's linters, one binary beside the integration tests (tests/it): the Grafana boards,
//! the Prometheus rules and the deployment files (Kubernetes, compose, Alertmanager, Dockerfile),
//! checked offline with promtool, amtool, hadolint and kubernetes-validate. None needs an MLflow.

// The linters need only the project's paths and virtualenv of the tests' support, no server of it.
#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod dashboards;
mod deploy;
mod rules;
