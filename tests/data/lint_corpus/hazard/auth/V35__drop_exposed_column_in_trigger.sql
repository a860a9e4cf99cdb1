-- hazard: an exposed column dropped inside a trigger function the file creates and fires
-- expect: contract/drop-exposed-column line 7
CREATE FUNCTION tidy_users() RETURNS trigger LANGUAGE plpgsql
    SET search_path = auth_schema
    AS $$
BEGIN
    ALTER TABLE authentication_user DROP COLUMN is_staff;
    RETURN NEW;
END $$;
CREATE TRIGGER tidy_users AFTER INSERT ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION tidy_users();
