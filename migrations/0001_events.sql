-- Delivery events the exporter observed or was sent: deployments, baselines, alias deletions and
-- incidents. MLflow keeps no history of registry changes, so this table is the only record of them.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    -- Identifies one change: the same change seen by polling and by a webhook is stored once.
    dedup_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    -- The alias, `Production` for the legacy stage, or empty for incidents.
    target TEXT NOT NULL,
    version INTEGER,
    at_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    run_start_ms INTEGER,
    run_end_ms INTEGER,
    version_created_ms INTEGER
);
CREATE INDEX events_at ON events (at_ms);
