-- hazard: DROP TABLE breaks running clients
-- expect: squawk/ban-drop-table line 3
DROP TABLE order_archive;
