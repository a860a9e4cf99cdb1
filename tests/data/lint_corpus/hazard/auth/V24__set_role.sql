-- hazard: SET ROLE switches the role the rest of the migration runs as
-- expect: lint/session-setting line 3
SET ROLE postgres;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
