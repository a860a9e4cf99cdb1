-- hazard: RENAME COLUMN breaks every running client that still uses the old name
-- expect: squawk/renaming-column line 3
ALTER TABLE orders RENAME COLUMN ref TO reference;
