//! The Syncer's reads of MLflow 3's traces in a cycle: the traces that started since each scope's
//! cursor (with the feedback look-back), the LLM calls MLflow aggregates by model, and the traces
//! read whole for the rate card. A scope whose read fails gives nothing; its cursors stay.

use super::*;

impl Syncer {
    /// Reads the traces that started at or after each scope's cursor, on an MLflow 3 with
    /// `mlflow.read_traces`, but of the workspaces whose part of this cycle `failed`. A scope
    /// whose read fails gives nothing this cycle: its cursor stays, so the next reads it again.
    pub(super) async fn read_traces(
        &mut self,
        mlflow3: bool,
        failed: &[(String, MlflowError)],
        now_ms: i64,
    ) -> TracesRead {
        let mut out = TracesRead::default();
        if !(mlflow3 && self.read_traces) {
            return out;
        }
        // Every `mlflow.feedback_interval`, each read looks back over the feedback window too.
        let look_back = self.feedback_since.filter(|_| {
            self.last_feedback_ms
                .is_none_or(|last| now_ms - last >= self.feedback_every_ms)
        });
        if look_back.is_some() {
            self.last_feedback_ms = Some(now_ms);
        }
        for scope in &self.scopes {
            let Some(ids) = scope
                .experiment_ids
                .as_ref()
                .filter(|_| !failed_here(scope, failed, &out))
            else {
                continue;
            };
            let since = self
                .trace_cursors
                .get(scope.workspace.as_deref().unwrap_or(""))
                .copied()
                .map(|c| look_back.map_or(c, |b| b.min(c)));
            let mut batch = traces::TraceBatch {
                workspace: scope.workspace.clone(),
                ..Default::default()
            };
            match scope
                .client
                .traces(ids, since, |page| batch.add(page))
                .await
            {
                Ok(n) => {
                    out.requests += n;
                    out.read += batch.len();
                    out.batches.push(batch);
                }
                Err(e) => out.failed.push((scope.workspace.clone(), e)),
            }
        }
        if self
            .last_llm_ms
            .is_none_or(|last| now_ms - last >= self.llm_every_ms)
        {
            self.last_llm_ms = Some(now_ms);
            self.read_llm_calls(failed, now_ms, &mut out).await;
        }
        self.read_rated(failed, &mut out).await;
        out
    }

    /// Reads whole the traces the rate card waits for, [`RATED_PER_REQUEST`] to a request and
    /// at most [`RATED_PER_CYCLE`] a scope each cycle: their LLM calls MLflow did not price.
    pub(super) async fn read_rated(&self, failed: &[(String, MlflowError)], out: &mut TracesRead) {
        for scope in &self.scopes {
            if failed_here(scope, failed, out) {
                continue;
            }
            let key = scope.workspace.as_deref().unwrap_or("");
            let ids: Vec<u128> = self
                .unrated
                .iter()
                .filter(|(s, _)| &**s == key)
                .map(|(_, id)| *id)
                .take(RATED_PER_CYCLE)
                .collect();
            for chunk in ids.chunks(RATED_PER_REQUEST) {
                let names: Vec<String> = chunk.iter().map(|id| format!("tr-{id:032x}")).collect();
                match scope.client.span_calls(&names).await {
                    Ok(found) => {
                        out.requests += 1;
                        let mut batch = traces::RatedBatch {
                            workspace: scope.workspace.clone(),
                            asked: chunk.to_vec(),
                            calls: Vec::new(),
                        };
                        for (id, calls) in found {
                            let id = traces::trace_id(&id);
                            let unpriced = calls.into_iter().filter(|c| !c.priced);
                            batch.calls.extend(unpriced.map(|c| (id, c)));
                        }
                        out.rated.push(batch);
                    }
                    Err(e) => {
                        out.failed.push((scope.workspace.clone(), e));
                        break;
                    }
                }
            }
        }
    }

    /// Reads each app's LLM calls by model over its window since the last read, up to
    /// `mlflow.traces_overlap` ago; an app whose read fails is read from the same point next time.
    pub(super) async fn read_llm_calls(
        &self,
        failed: &[(String, MlflowError)],
        now_ms: i64,
        out: &mut TracesRead,
    ) {
        let to_ms = now_ms - self.traces_overlap_ms - 1;
        for scope in &self.scopes {
            if failed_here(scope, failed, out) {
                continue;
            }
            let key = scope.workspace.as_deref().unwrap_or("");
            let apps = self.llm_cursors.iter().filter(|((s, _), _)| &**s == key);
            for ((_, experiment), cursor) in apps {
                let from = (*cursor != crate::tally::traces::NEVER).then_some(*cursor);
                if from.is_some_and(|f| f > to_ms) {
                    continue;
                }
                match scope.client.llm_calls(experiment, from, to_ms).await {
                    Ok((calls, n)) => {
                        out.requests += n;
                        out.llm.push(traces::LlmBatch {
                            workspace: scope.workspace.clone(),
                            experiment_id: experiment.to_string(),
                            from_ms: *cursor,
                            next_ms: to_ms + 1,
                            calls,
                        });
                    }
                    Err(e) => {
                        out.failed.push((scope.workspace.clone(), e));
                        break;
                    }
                }
            }
        }
    }
}

/// Whether this cycle's reads of `scope` failed already (its workspace's part, or a traces read):
/// the reads after them skip it, and the next cycle reads it again from the same points.
pub(super) fn failed_here(
    scope: &Scope,
    failed: &[(String, MlflowError)],
    out: &TracesRead,
) -> bool {
    let w = scope.workspace.as_deref();
    failed.iter().any(|(f, _)| Some(f.as_str()) == w)
        || out.failed.iter().any(|(f, _)| f.as_deref() == w)
}

/// Traces read whole for the rate card: a request's, and a scope's each cycle (a backlog drains
/// over cycles instead of stalling one).
pub(super) const RATED_PER_REQUEST: usize = 100;
pub const RATED_PER_CYCLE: usize = 500;

/// What one cycle's reads of traces gave.
#[derive(Default)]
pub(super) struct TracesRead {
    pub(super) batches: Vec<traces::TraceBatch>,
    pub(super) llm: Vec<traces::LlmBatch>,
    pub(super) rated: Vec<traces::RatedBatch>,
    pub(super) requests: usize,
    pub(super) read: usize,
    pub(super) failed: Vec<(Option<String>, MlflowError)>,
}
