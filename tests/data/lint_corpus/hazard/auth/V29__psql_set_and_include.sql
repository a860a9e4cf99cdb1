-- hazard: psql's \set and \i are not SQL
-- expect: lint/psql-meta-command line 4
-- expect: lint/psql-meta-command line 5
\set ON_ERROR_STOP on
\i other_file.sql
CREATE TABLE report_cache (id bigint PRIMARY KEY);
