-- hazard: an exposed column dropped inside a DO block
-- expect: contract/drop-exposed-column line 5
DO $$
BEGIN
    ALTER TABLE authentication_user DROP COLUMN is_active;
END $$;
