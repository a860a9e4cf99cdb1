-- hazard: SET SESSION AUTHORIZATION switches the session user
-- expect: lint/session-setting line 3
SET SESSION AUTHORIZATION postgres;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
