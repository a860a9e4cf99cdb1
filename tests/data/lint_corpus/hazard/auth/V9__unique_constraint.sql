-- hazard: ADD UNIQUE builds an index under an ACCESS EXCLUSIVE lock
-- expect: squawk/disallowed-unique-constraint line 3
ALTER TABLE orders ADD CONSTRAINT orders_ref_unique UNIQUE (ref);
