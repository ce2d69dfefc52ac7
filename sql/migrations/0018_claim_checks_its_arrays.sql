-- _check_claim_arguments now also takes get_jobs' task_identifiers and
-- forbidden_flags, to refuse a null element in them; its old form goes.
DROP FUNCTION IF EXISTS hopper._check_claim_arguments(text, integer, interval, timestamptz);
