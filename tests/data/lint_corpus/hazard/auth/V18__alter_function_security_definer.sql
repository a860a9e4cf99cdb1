-- hazard: ALTER FUNCTION ... SECURITY DEFINER without SET search_path
-- expect: lint/security-definer-search-path line 3
ALTER FUNCTION order_total(bigint) SECURITY DEFINER;
