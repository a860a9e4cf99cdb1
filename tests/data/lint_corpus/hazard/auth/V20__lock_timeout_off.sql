-- hazard: SET lock_timeout = 0 lets every later statement wait forever behind a lock, and block all queries behind it
-- expect: lint/session-setting line 3
SET lock_timeout = 0;
CREATE TABLE report_cache (id bigint PRIMARY KEY, body jsonb);
