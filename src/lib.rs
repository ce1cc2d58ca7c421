//! mlflow-exporter: reads an MLflow tracking server on a schedule and exposes what its platform's
//! leads ask about (adoption, delivery, cost, reliability) as Prometheus metrics.
//!
//! Data flows through the modules in this order: [`source`] (MLflow's REST API, webhooks, probes'
//! requests) → [`sync`] (the in-memory snapshot) → [`tally`] (what was counted from it, once each)
//! and [`delivery`] (registry changes as events) and [`store`] (their durable history) and
//! [`probes`] (endpoints measured from outside) → [`metrics`] (pure functions to metric families)
//! → [`exposition`] (encoded once per change) → [`server`] (HTTP). [`telemetry`] is the exporter's
//! own metrics, the one handle every stage counts into; [`app`] wires the stages together.
// One exception, named and justified where it is: `memory::release_freed`.
#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod delivery;
pub mod error;
pub mod exposition;
pub mod fuzzing;
pub mod histogram;
pub mod lock;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod probes;
pub mod server;
pub mod source;
pub mod store;
pub mod sync;
pub mod tally;
pub mod telemetry;

/// Anything that stops the exporter from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] error::ConfigError),
    #[error(transparent)]
    Mlflow(#[from] error::MlflowError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    WebConfig(#[from] server::web_config::WebConfigError),
    #[error("HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}
