-- Production logs in a half-open event-time window [start, end), with the cheap filters pushed
-- down. A row whose event timestamp is missing, or stamped after its own ingestion (beyond the
-- allowed clock skew), is windowed by its ingestion time instead: it is read exactly once, and
-- quarantined there with its reason.
--
-- Pushdown: the user-action and quality-score rules are decided here (`pushdown_kept`). The
-- text of a row they reject never leaves the warehouse; what validation needs of it comes as
-- facts computed here with the same semantics as `flywheel.schema.text_facts` (length in code
-- points, blank by Python's whitespace set, the first control or bidi character), with a digest
-- of the texts so that two copies of a request_id can still be told apart.
WITH w AS (
    SELECT
        *,
        COALESCE(
            list_contains($allowed_actions, user_action)
            AND NOT isnan(quality_score)
            AND quality_score >= $min_quality_score,
            FALSE
        ) AS pushdown_kept
    FROM production_logs
    WHERE CASE
            WHEN "timestamp" IS NULL OR "timestamp" > ingested_at + to_seconds($max_skew_s) THEN ingested_at
            ELSE "timestamp"
          END >= $window_start
      AND CASE
            WHEN "timestamp" IS NULL OR "timestamp" > ingested_at + to_seconds($max_skew_s) THEN ingested_at
            ELSE "timestamp"
          END < $window_end
)
SELECT
    request_id, "timestamp", user_id,
    CASE WHEN pushdown_kept THEN prompt END AS prompt,
    CASE WHEN pushdown_kept THEN response END AS response,
    user_action,
    CASE WHEN pushdown_kept THEN correction END AS correction,
    task_type, quality_score, included_in_training, model_version,
    CASE WHEN pushdown_kept THEN context END AS context,
    ingested_at,
    pushdown_kept,
    md5(to_json(list_value(prompt, response, correction, context))) AS text_digest,
    prompt IS NOT NULL AS prompt_present,
    length(prompt) AS prompt_chars,
    regexp_full_match(prompt, '[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*') AS prompt_blank,
    CASE WHEN regexp_matches(prompt, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN length(regexp_extract(prompt, '(?s)^(.*?)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]', 1)) END AS prompt_control_at,
    CASE WHEN regexp_matches(prompt, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN unicode(regexp_extract(prompt, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')) END AS prompt_control_char,
    response IS NOT NULL AS response_present,
    length(response) AS response_chars,
    regexp_full_match(response, '[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*') AS response_blank,
    CASE WHEN regexp_matches(response, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN length(regexp_extract(response, '(?s)^(.*?)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]', 1)) END AS response_control_at,
    CASE WHEN regexp_matches(response, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN unicode(regexp_extract(response, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')) END AS response_control_char,
    correction IS NOT NULL AS correction_present,
    length(correction) AS correction_chars,
    regexp_full_match(correction, '[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*') AS correction_blank,
    CASE WHEN regexp_matches(correction, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN length(regexp_extract(correction, '(?s)^(.*?)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]', 1)) END AS correction_control_at,
    CASE WHEN regexp_matches(correction, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN unicode(regexp_extract(correction, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')) END AS correction_control_char,
    context IS NOT NULL AS context_present,
    length(context) AS context_chars,
    regexp_full_match(context, '[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*') AS context_blank,
    CASE WHEN regexp_matches(context, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN length(regexp_extract(context, '(?s)^(.*?)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]', 1)) END AS context_control_at,
    CASE WHEN regexp_matches(context, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')
         THEN unicode(regexp_extract(context, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]')) END AS context_control_char
FROM w
ORDER BY COALESCE("timestamp", ingested_at), request_id
