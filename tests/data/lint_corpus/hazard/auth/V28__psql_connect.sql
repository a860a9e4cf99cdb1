-- hazard: \connect is a psql meta-command (a pasted psql script)
-- expect: lint/psql-meta-command line 3
\connect edulink
CREATE TABLE report_cache (id bigint PRIMARY KEY);
