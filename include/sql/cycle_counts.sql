-- Per-cycle fate counts: quarantined rows, and kept / rejected candidates (a candidate is kept
-- only when every rule kept it).
SELECT
    (SELECT COUNT(DISTINCT row_number) FROM quarantine WHERE cycle_id = $cycle_id) AS quarantined,
    (SELECT COUNT(*) FROM (
        SELECT request_id FROM decisions WHERE cycle_id = $cycle_id
        GROUP BY request_id HAVING BOOL_AND(kept))) AS kept,
    (SELECT COUNT(*) FROM (
        SELECT request_id FROM decisions WHERE cycle_id = $cycle_id
        GROUP BY request_id HAVING NOT BOOL_AND(kept))) AS rejected
