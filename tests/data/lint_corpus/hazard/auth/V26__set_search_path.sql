-- hazard: SET search_path points unqualified names elsewhere for the rest of the file
-- expect: lint/session-setting line 3
SET search_path TO public;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
