-- hazard: DROP COLUMN of a column other services read (exposed)
-- expect: contract/drop-exposed-column line 3
ALTER TABLE authentication_user DROP COLUMN email;
