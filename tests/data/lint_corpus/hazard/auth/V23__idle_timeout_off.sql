-- hazard: SET idle_in_transaction_session_timeout = 0 (pg_dump's preamble)
-- expect: lint/session-setting line 3
SET idle_in_transaction_session_timeout = 0;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
