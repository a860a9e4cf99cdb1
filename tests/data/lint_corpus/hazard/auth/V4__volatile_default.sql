-- hazard: ADD COLUMN with a volatile default rewrites the whole table under an ACCESS EXCLUSIVE lock
-- expect: squawk/adding-field-with-default line 3
ALTER TABLE authentication_user ADD COLUMN api_ref uuid DEFAULT gen_random_uuid();
