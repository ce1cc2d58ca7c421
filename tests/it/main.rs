//! Every integration test of the exporter, one module per area, in one binary: linked once against
//! the crate instead of once per file, and compiled with tests/support, so that the compiler sees
//! which of its helpers no test uses. The repository's linters are the other binary, tests/lint.

#[path = "../support/mod.rs"]
mod support;

mod binary;
mod counters_mlflow;
mod crash_safety;
mod delivery_mlflow;
mod e2e_mlflow;
mod fuzz_regressions;
mod mlflow_client;
mod mlflow_tls;
mod mlflow_webhook;
mod probe_faults;
mod probe_schedule;
mod probes_mlflow;
mod prometheus_e2e;
mod secrets;
mod series_budget;
mod store_faults;
mod sync_faults;
mod traces_mlflow;
mod web_limits;
mod web_security;
mod webhooks;
mod workspaces_mlflow;
