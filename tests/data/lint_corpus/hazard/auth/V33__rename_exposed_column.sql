-- hazard: RENAME of an exposed column
-- expect: contract/rename-exposed-column line 3
ALTER TABLE authentication_user RENAME COLUMN last_login TO last_seen;
