-- Production logs in a half-open event-time window [start, end). A row whose event timestamp is
-- missing, or stamped after its own ingestion (beyond the allowed clock skew), is windowed by
-- its ingestion time instead: it is read exactly once, and quarantined there with its reason.
SELECT
    request_id, "timestamp", user_id, prompt, response, user_action, correction, task_type,
    quality_score, included_in_training, model_version, context, ingested_at
FROM production_logs
WHERE CASE
        WHEN "timestamp" IS NULL OR "timestamp" > ingested_at + to_seconds($max_skew_s) THEN ingested_at
        ELSE "timestamp"
      END >= $window_start
  AND CASE
        WHEN "timestamp" IS NULL OR "timestamp" > ingested_at + to_seconds($max_skew_s) THEN ingested_at
        ELSE "timestamp"
      END < $window_end
ORDER BY COALESCE("timestamp", ingested_at), request_id
