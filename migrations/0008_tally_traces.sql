-- MLflow 3's traces, counted once each by id: every scope's cursor (where its next read starts,
-- `''` without workspaces), and the traces read at or after the lowest one (counted, or still in
-- progress), so that the overlap a read looks back over counts nothing twice after a restart.
CREATE TABLE tally_trace_cursors (
    scope TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tally_traces (
    trace_id BLOB PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    in_progress INTEGER NOT NULL
) WITHOUT ROWID;
