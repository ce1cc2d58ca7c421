-- Feedback on traces (MLflow 3's assessments), counted once each by id: remembered with the start
-- of its trace (kind 1) beside the traces (kind 0) for as long as a read can return it again.
-- tally_trace_cursors also holds, under the scope '*memory' (no workspace is named so), the start
-- from which every trace and feedback is remembered: no read looks back before it.
ALTER TABLE tally_traces ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;

-- Where the next read of each app's LLM calls (MLflow's SPANS aggregation, by model) starts, by
-- scope (the workspace, '' without workspaces) and experiment id; i64's least value: not read yet.
CREATE TABLE tally_llm_cursors (
    scope TEXT NOT NULL,
    experiment TEXT NOT NULL,
    next_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, experiment)
) WITHOUT ROWID;

-- Traces counted that the rate card (cost.token_rates) waits for: read whole later, by id, with
-- their scope and experiment id; a row goes once the trace is read.
CREATE TABLE tally_unrated (
    trace_id BLOB PRIMARY KEY,
    scope TEXT NOT NULL,
    experiment TEXT NOT NULL
) WITHOUT ROWID;
