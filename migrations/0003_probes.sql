-- Probes of serving endpoints: each outage (opened after enough failed probes, closed by a success),
-- and the running totals of every probe, so availability and MTBF continue across restarts.
CREATE TABLE probe_outages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    probe TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    reason TEXT NOT NULL,
    UNIQUE (probe, started_ms)
);

CREATE TABLE probe_totals (
    probe TEXT PRIMARY KEY,
    uptime_ms INTEGER NOT NULL,
    outage_ms INTEGER NOT NULL,
    outages INTEGER NOT NULL,
    observed_ms INTEGER NOT NULL,
    open_since_ms INTEGER
);
