-- hazard: ALTER DOMAIN ... ADD CONSTRAINT on an existing domain checks every column that uses it
-- expect: squawk/ban-alter-domain-with-add-constraint line 3
ALTER DOMAIN email_address ADD CONSTRAINT email_has_at CHECK (VALUE LIKE '%@%');
