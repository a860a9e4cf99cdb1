-- hazard: ALTER COLUMN TYPE rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock
-- expect: squawk/changing-column-type line 3
ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12, 2);
