-- hazard: a function's own SET lock_timeout = 0 clause lifts the runner's lock bound whenever a migration calls it
-- expect: lint/function-timeout-clause line 3
CREATE FUNCTION rebuild_report_cache() RETURNS void LANGUAGE sql SET lock_timeout = 0
    AS $$ SELECT 1 $$;
