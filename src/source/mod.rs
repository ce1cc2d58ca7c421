//! Where data comes from: the MLflow tracking server's REST API (and, later, probes and webhooks).
//! Nothing here keeps state between cycles; the sync module decides what to read and when.

pub mod mlflow;
