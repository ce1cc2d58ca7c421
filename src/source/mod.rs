//! Where data comes from: the MLflow tracking server's REST API, and the payloads pushed to the
//! exporter (MLflow's and Alertmanager's webhooks, CI/CD events). Nothing here keeps state; the sync module and
//! the recorder decide what to read and what to keep.

pub mod alertmanager;
pub mod events_api;
pub mod http;
pub mod mlflow;
pub mod mlflow_webhook;
pub mod probe;
