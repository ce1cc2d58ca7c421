-- The delivery history folded up to an event, kept when retention deletes the events it was folded
-- from: counters fold on from it at start-up instead of starting lower.
CREATE TABLE delivery_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- Every event with an id up to this one is folded in.
    upto_id INTEGER NOT NULL,
    state TEXT NOT NULL
);
