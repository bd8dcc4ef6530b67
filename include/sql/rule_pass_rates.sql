-- Per rule: how many candidates it judged in a cycle, and the share it kept.
SELECT rule, COUNT(*) AS evaluated, AVG(CASE WHEN kept THEN 1.0 ELSE 0.0 END) AS pass_rate
FROM decisions
WHERE cycle_id = $cycle_id
GROUP BY rule
ORDER BY rule
