-- hazard: set_config('lock_timeout', ...) inside a DO block turns the runner's lock timeout off
-- expect: lint/session-setting line 5
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '0', true);
END $$;
