-- hazard: SET LOCAL statement_timeout changes the runner's timeout for the rest of the transaction (the file)
-- expect: lint/session-setting line 3
SET LOCAL statement_timeout = '1h';
CREATE TABLE report_cache (id bigint PRIMARY KEY, body jsonb);
