-- An included-credit alert names the allowance it is a percentage of, so that a plan change to
-- a larger allowance makes new thresholds (fired when reached) instead of leaving the team
-- without a warning. Rows written before (kind 0, value the percentage) were thresholds of the
-- period's allowance, which is what `periods` holds for them.
UPDATE alerts
SET kind = 1000 + value,
    value = coalesce((SELECT included FROM periods p WHERE p.team_id = alerts.team_id AND p.start_ms = alerts.period_start_ms), 0)
WHERE kind = 0;
