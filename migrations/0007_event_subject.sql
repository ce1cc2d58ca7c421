-- What an event's change is of: a registered model (`model`) or a prompt of MLflow 3's prompt
-- registry (`prompt`), so that prompts and models are folded apart and never mixed in one figure.
ALTER TABLE events ADD COLUMN subject TEXT NOT NULL DEFAULT 'model';
-- Deployments of prompts were counted by the tally, from the aliases it last saw; the delivery
-- history records them now (with rollbacks and lead time), so the tally's rows are dropped.
DELETE FROM tally_series
WHERE family IN ('mlflow_prompt_deployments_total', 'prompt_alias_versions')
   OR (family = 'corrections' AND labels = '["mlflow_prompt_deployments_total"]');
