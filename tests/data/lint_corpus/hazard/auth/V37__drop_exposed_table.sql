-- hazard: DROP TABLE of a table with exposed columns
-- expect: contract/drop-exposed-table line 3
DROP TABLE authentication_user;
