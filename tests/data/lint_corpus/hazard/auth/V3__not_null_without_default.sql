-- hazard: ADD COLUMN ... NOT NULL without a default fails on a table with rows (and rewrites it on old servers)
-- expect: squawk/adding-required-field line 3
ALTER TABLE authentication_user ADD COLUMN tenant_id bigint NOT NULL;
