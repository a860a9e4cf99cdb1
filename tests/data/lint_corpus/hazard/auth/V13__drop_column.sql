-- hazard: DROP COLUMN breaks running clients that still select it
-- expect: squawk/ban-drop-column line 3
ALTER TABLE orders DROP COLUMN legacy_code;
