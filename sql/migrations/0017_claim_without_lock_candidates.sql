-- _claim now finds the task keys with work and walks them itself, two calls
-- fewer for every claim; its rare second walk is a second pass of the same one.
DROP FUNCTION IF EXISTS hopper._lock_candidates(text[], integer, text[], timestamptz);
DROP FUNCTION IF EXISTS hopper._lock_walk(integer[], integer[], bigint[], text[], text[], timestamptz);
