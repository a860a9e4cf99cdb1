-- hazard: SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock
-- expect: squawk/adding-not-nullable-field line 3
ALTER TABLE orders ALTER COLUMN user_id SET NOT NULL;
