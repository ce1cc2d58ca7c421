//! What the last sync found MLflow to be: whether it has workspaces and whether it is an MLflow 3.
//! Set by the pipeline after each cycle; read by what names or routes by it (the published labels,
//! the webhook receivers' reads of MLflow), so the fact is held once.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Shape {
    workspaces: AtomicBool,
    mlflow3: AtomicBool,
}

impl Shape {
    /// Records what the last cycle found.
    pub fn set(&self, workspaces: bool, mlflow3: bool) {
        self.workspaces.store(workspaces, Ordering::Release);
        self.mlflow3.store(mlflow3, Ordering::Release);
    }

    /// MLflow has workspaces: `workspace/name` values become a `workspace` label as published, and
    /// models pushed by webhooks are named `workspace/name`, as the snapshot names them.
    pub fn workspaces(&self) -> bool {
        self.workspaces.load(Ordering::Acquire)
    }

    /// MLflow answers server-info: the families of what only MLflow 3 has (logged models) are
    /// published; an MLflow 2 has none of them, not even at 0.
    pub fn mlflow3(&self) -> bool {
        self.mlflow3.load(Ordering::Acquire)
    }
}
