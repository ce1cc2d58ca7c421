-- The end users and sessions of each GenAI app (by the experiment label its traces are counted
-- under, as JSON like tally_series' labels), as 64 bits of a hash of their names, with the start
-- of their latest trace: the active users and sessions of the adoption windows survive a restart.
CREATE TABLE tally_app_people (
    labels TEXT NOT NULL,
    -- 0: a user (mlflow.trace.user), 1: a session (mlflow.trace.session).
    kind INTEGER NOT NULL,
    person INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (labels, kind, person)
) WITHOUT ROWID;
