-- hazard: SECURITY DEFINER function without SET search_path: callers can hijack the names it uses
-- expect: lint/security-definer-search-path line 3
CREATE FUNCTION user_count() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT count(*) FROM authentication_user $$;
