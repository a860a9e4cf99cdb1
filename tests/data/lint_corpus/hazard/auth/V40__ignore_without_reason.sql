-- hazard: an ignore marker that gives no reason
-- expect: lint/marker-without-reason line 3
-- edulink-db: ignore squawk/require-concurrent-index-creation
CREATE INDEX orders_ref ON orders (ref);
