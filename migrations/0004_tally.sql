-- What the exporter counted from MLflow, each thing once, so that counters never go back: not after
-- `mlflow gc`, a full resync or a restart. Runs: what each counted (its compute time, which families);
-- series: the counters' values by family and labels; objects: experiments, models, versions and
-- users counted once each; labels: the label values that have series of their own (sticky folding).
CREATE TABLE tally_runs (
    run_key BLOB PRIMARY KEY,
    counted_ms INTEGER NOT NULL,
    corrected_ms INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    hourly_rate REAL NOT NULL,
    gpus INTEGER NOT NULL,
    idle_cost REAL NOT NULL,
    gone INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tally_series (
    family TEXT NOT NULL,
    -- JSON array of the label values, as exported.
    labels TEXT NOT NULL,
    -- JSON of the value: counts, histogram buckets with their bounds, money by rate.
    data TEXT NOT NULL,
    PRIMARY KEY (family, labels)
) WITHOUT ROWID;

CREATE TABLE tally_objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    gone INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

CREATE TABLE tally_labels (
    label TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (label, value)
) WITHOUT ROWID;
