-- The model's team tag when a change was seen: the delivery histograms are by team.
ALTER TABLE events ADD COLUMN team TEXT;
