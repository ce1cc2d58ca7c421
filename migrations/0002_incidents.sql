-- Incidents: opened and resolved by Alertmanager or posted by CI/CD, attributed to a model.
ALTER TABLE events ADD COLUMN incident TEXT;
ALTER TABLE events ADD COLUMN severity TEXT;
