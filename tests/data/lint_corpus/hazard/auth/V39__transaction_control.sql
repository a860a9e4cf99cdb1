-- hazard: Django sqlmigrate output pasted with its BEGIN/COMMIT: the runner owns the transaction
-- expect: lint/migration-file line 3
BEGIN;
CREATE TABLE report_cache (id bigint PRIMARY KEY);
COMMIT;
