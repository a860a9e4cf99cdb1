-- hazard: ADD COLUMN ... GENERATED ALWAYS AS (...) STORED rewrites the whole table
-- expect: squawk/adding-field-with-default line 3
ALTER TABLE orders ADD COLUMN total_cents bigint GENERATED ALWAYS AS (amount * 100) STORED;
