-- hazard: RESET ALL drops every setting the runner made, timeouts included
-- expect: lint/session-setting line 3
RESET ALL;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
