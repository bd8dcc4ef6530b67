-- Production logs in a half-open event-time window [start, end). A row whose event timestamp
-- is missing is windowed by its ingestion time, so it is read (and quarantined) once.
SELECT
    request_id, "timestamp", user_id, prompt, response, user_action, correction, task_type,
    quality_score, included_in_training, model_version, context, ingested_at
FROM production_logs
WHERE COALESCE("timestamp", ingested_at) >= $window_start
  AND COALESCE("timestamp", ingested_at) < $window_end
ORDER BY COALESCE("timestamp", ingested_at), request_id
