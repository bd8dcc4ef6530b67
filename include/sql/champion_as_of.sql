-- The champion in force for a cycle at logical date `as_of`: the outcome of the latest decision
-- strictly before it. A pure function of the history, so a rerun or backfill sees the same one.
SELECT champion_after
FROM promotions
WHERE logical_date < $as_of
ORDER BY logical_date DESC, decided_at DESC
LIMIT 1
