-- hazard: type change of an exposed column
-- expect: contract/retype-exposed-column line 3
ALTER TABLE authentication_user ALTER COLUMN email TYPE varchar(200);
