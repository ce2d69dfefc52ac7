-- Schedules (SPEC.md 4.7): the public record of a schedule. The functions
-- return hopper._schedules rows, whose columns are these: a function file
-- may only name types that the first migrations made (migrate up_to applies
-- the current function files to an old schema).
CREATE VIEW hopper.schedules AS
SELECT
    s.name,
    s.cron,
    s.task_identifier,
    s.payload,
    s.job_options,
    s.backfill,
    s.timezone,
    s.last_fired_at,
    s.created_at
FROM hopper._schedules AS s;
