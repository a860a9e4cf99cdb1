-- hazard: ADD FOREIGN KEY without NOT VALID scans the table holding a lock on both tables
-- expect: squawk/adding-foreign-key-constraint line 3
ALTER TABLE orders ADD CONSTRAINT orders_user_fk
    FOREIGN KEY (user_id) REFERENCES authentication_user (id);
