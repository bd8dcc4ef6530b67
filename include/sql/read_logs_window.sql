-- Production logs in a half-open event-time window [start, end), with the cheap filters pushed
-- down. A row whose event timestamp is missing, or stamped after its own ingestion (beyond the
-- allowed clock skew), is windowed by its ingestion time instead: it is read exactly once, and
-- quarantined there with its reason.
--
-- Pushdown: the user-action and quality-score rules are decided here (`pushdown_kept`), next to
-- the window itself. The text of a row they reject never leaves the warehouse; what validation
-- needs of it comes as facts computed here with the same semantics as
-- `flywheel.validation.text_facts` (length in code points, blank by Python's whitespace set, the
-- first control or bidi character), with a digest of the texts so that two copies of a
-- request_id can still be told apart.
--
-- Written once in DuckDB's dialect and transpiled for BigQuery and Snowflake, so it keeps to
-- functions all three share: the character classes come as bound parameters made of literal
-- characters (space_class, control_free_prefix), not as regex escapes that each engine spells
-- differently; the first control character is where the longest prefix free of them ends,
-- found with regexp_replace alone (no lazy quantifier, no regexp_extract, whose pattern the
-- Snowflake emulator cannot take as a parameter).
WITH p AS (
    -- Each bound value once, typed: the rest of the query refers to it by name.
    SELECT
        CAST($window_start AS TIMESTAMPTZ) AS window_start, CAST($window_end AS TIMESTAMPTZ) AS window_end,
        CAST($max_skew_us AS BIGINT) AS max_skew_us,
        CAST($min_quality_score AS DOUBLE) AS min_quality_score,
        $space_class AS space_class, $control_free_prefix AS control_free_prefix
),
w AS (
    SELECT
        production_logs.*, p.*,
        CASE WHEN "timestamp" IS NULL OR date_diff('microsecond', ingested_at, "timestamp") > p.max_skew_us
             THEN ingested_at ELSE "timestamp" END AS window_time
    FROM production_logs CROSS JOIN p
    -- Implied by the window below, and lets the warehouse prune partitions on "timestamp".
    WHERE ("timestamp" IS NULL OR "timestamp" >= p.window_start)
),
k AS (
    SELECT
        *,
        COALESCE(
            list_contains($allowed_actions, user_action)
            AND NOT isnan(quality_score)
            AND quality_score >= min_quality_score,
            FALSE
        ) AS pushdown_kept
    FROM w
    WHERE window_time >= window_start AND window_time < window_end
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
    md5(concat(
        COALESCE(CAST(length(prompt) AS VARCHAR) || ':' || prompt, '-'), ',',
        COALESCE(CAST(length(response) AS VARCHAR) || ':' || response, '-'), ',',
        COALESCE(CAST(length(correction) AS VARCHAR) || ':' || correction, '-'), ',',
        COALESCE(CAST(length(context) AS VARCHAR) || ':' || context, '-')
    )) AS text_digest,
    prompt IS NOT NULL AS prompt_present,
    length(prompt) AS prompt_chars,
    length(regexp_replace(prompt, space_class, '', 'g')) = 0 AS prompt_blank,
    CASE WHEN length(regexp_replace(prompt, control_free_prefix, '', 'g')) > 0
         THEN length(prompt) - length(regexp_replace(prompt, control_free_prefix, '', 'g')) END AS prompt_control_at,
    CASE WHEN length(regexp_replace(prompt, control_free_prefix, '', 'g')) > 0
         THEN unicode(regexp_replace(prompt, control_free_prefix, '', 'g')) END AS prompt_control_char,
    response IS NOT NULL AS response_present,
    length(response) AS response_chars,
    length(regexp_replace(response, space_class, '', 'g')) = 0 AS response_blank,
    CASE WHEN length(regexp_replace(response, control_free_prefix, '', 'g')) > 0
         THEN length(response) - length(regexp_replace(response, control_free_prefix, '', 'g')) END AS response_control_at,
    CASE WHEN length(regexp_replace(response, control_free_prefix, '', 'g')) > 0
         THEN unicode(regexp_replace(response, control_free_prefix, '', 'g')) END AS response_control_char,
    correction IS NOT NULL AS correction_present,
    length(correction) AS correction_chars,
    length(regexp_replace(correction, space_class, '', 'g')) = 0 AS correction_blank,
    CASE WHEN length(regexp_replace(correction, control_free_prefix, '', 'g')) > 0
         THEN length(correction) - length(regexp_replace(correction, control_free_prefix, '', 'g')) END AS correction_control_at,
    CASE WHEN length(regexp_replace(correction, control_free_prefix, '', 'g')) > 0
         THEN unicode(regexp_replace(correction, control_free_prefix, '', 'g')) END AS correction_control_char,
    context IS NOT NULL AS context_present,
    length(context) AS context_chars,
    length(regexp_replace(context, space_class, '', 'g')) = 0 AS context_blank,
    CASE WHEN length(regexp_replace(context, control_free_prefix, '', 'g')) > 0
         THEN length(context) - length(regexp_replace(context, control_free_prefix, '', 'g')) END AS context_control_at,
    CASE WHEN length(regexp_replace(context, control_free_prefix, '', 'g')) > 0
         THEN unicode(regexp_replace(context, control_free_prefix, '', 'g')) END AS context_control_char
FROM k
ORDER BY COALESCE("timestamp", ingested_at), request_id
