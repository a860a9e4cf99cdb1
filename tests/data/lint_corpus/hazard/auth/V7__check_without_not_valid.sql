-- hazard: ADD CHECK without NOT VALID scans the whole table under an ACCESS EXCLUSIVE lock
-- expect: squawk/constraint-missing-not-valid line 3
ALTER TABLE orders ADD CONSTRAINT orders_amount_positive CHECK (amount > 0);
