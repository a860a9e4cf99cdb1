-- hazard: RENAME TABLE of an existing table breaks every running client
-- expect: squawk/renaming-table line 3
ALTER TABLE orders RENAME TO purchase_orders;
