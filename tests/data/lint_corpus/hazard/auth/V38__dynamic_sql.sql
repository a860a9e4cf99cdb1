-- hazard: EXECUTE of SQL built at run time cannot be checked
-- expect: contract/dynamic-sql line 6
DO $$
DECLARE t text := 'authentication_user';
BEGIN
    EXECUTE 'ALTER TABLE ' || t || ' DROP COLUMN email';
END $$;
