-- hazard: SET statement_timeout = 0 turns the runner's statement timeout off for the rest of the file
-- expect: lint/session-setting line 3
SET statement_timeout = 0;
CREATE TABLE report_cache (id bigint PRIMARY KEY, body jsonb);
