"""Migrations that break a service contract (refused) and ones that do not (allowed).

Each entry: (id, service, SQL).  The default topology exposes
auth_schema.authentication_user (id, email, is_active, is_staff, last_login),
user_schema.profiles_userprofile (id, user_id, first_name, ...), user_schema.profiles_profile,
and institution_schema.institutions_institution / institutions_program.
"""

from __future__ import annotations

BREAKING: list[tuple[str, str, str]] = [
    # -- columns: drop
    ("drop-col", "auth", "ALTER TABLE authentication_user DROP COLUMN email;"),
    ("drop-col-if-exists", "auth",
     "ALTER TABLE authentication_user DROP COLUMN IF EXISTS email;"),
    ("drop-col-no-keyword", "auth", "ALTER TABLE authentication_user DROP email;"),
    ("drop-col-cascade", "auth", "ALTER TABLE authentication_user DROP COLUMN email CASCADE;"),
    ("drop-col-table-if-exists-only", "auth",
     "ALTER TABLE IF EXISTS ONLY authentication_user DROP COLUMN is_active;"),
    ("drop-col-qualified", "auth",
     "ALTER TABLE auth_schema.authentication_user DROP COLUMN last_login;"),
    ("drop-col-quoted", "auth",
     'ALTER TABLE "auth_schema"."authentication_user" DROP COLUMN "email";'),
    ("drop-col-upper-unquoted", "auth", "ALTER TABLE AUTHENTICATION_USER DROP COLUMN EMAIL;"),
    ("drop-col-multi-cmd", "auth",
     "ALTER TABLE authentication_user ADD COLUMN nickname text, DROP COLUMN is_staff;"),
    ("drop-col-multi-cmd-last", "user",
     "ALTER TABLE profiles_userprofile ALTER COLUMN bio SET DEFAULT '',\n"
     "  ADD COLUMN avatar text,\n  DROP COLUMN phone;"),
    ("drop-col-after-harmless", "auth",
     "CREATE TABLE audit_tmp (id int);\nSELECT 1;\n"
     "ALTER TABLE authentication_user DROP COLUMN email;"),
    ("drop-col-other-service-qualified", "user",
     "ALTER TABLE auth_schema.authentication_user DROP COLUMN email;"),
    ("drop-col-institution", "institution",
     "ALTER TABLE institutions_program DROP COLUMN duration_years;"),
    ("drop-col-django-mirror", "user", "ALTER TABLE profiles_profile DROP COLUMN display_name;"),
    ("drop-col-search-path", "user",
     "SET search_path = auth_schema;\nALTER TABLE authentication_user DROP COLUMN email;"),
    # -- columns: rename
    ("rename-col", "auth", "ALTER TABLE authentication_user RENAME COLUMN email TO mail;"),
    ("rename-col-no-keyword", "auth", "ALTER TABLE authentication_user RENAME email TO mail;"),
    ("rename-col-if-exists", "institution",
     "ALTER TABLE IF EXISTS institutions_institution RENAME COLUMN code TO short_code;"),
    ("rename-col-quoted", "user",
     'ALTER TABLE "profiles_userprofile" RENAME COLUMN "first_name" TO given_name;'),
    ("rename-col-only", "user",
     "ALTER TABLE ONLY user_schema.profiles_userprofile RENAME last_name TO family_name;"),
    # -- columns: retype
    ("retype-col", "auth", "ALTER TABLE authentication_user ALTER COLUMN email TYPE varchar(200);"),
    ("retype-col-set-data", "auth",
     "ALTER TABLE authentication_user ALTER COLUMN is_active SET DATA TYPE int"
     " USING is_active::int;"),
    ("retype-col-multi", "institution",
     "ALTER TABLE institutions_institution ADD COLUMN x int,"
     " ALTER COLUMN country TYPE text;"),
    ("retype-id", "user", "ALTER TABLE profiles_userprofile ALTER id TYPE text;"),
    # -- tables
    ("drop-table", "auth", "DROP TABLE authentication_user;"),
    ("drop-table-if-exists", "auth", "DROP TABLE IF EXISTS authentication_user;"),
    ("drop-table-list-cascade", "institution",
     "DROP TABLE institutions_program, institutions_institution CASCADE;"),
    ("drop-table-second-of-list", "auth",
     "CREATE TABLE scratch (id int);\nDROP TABLE scratch, auth_schema.authentication_user;"),
    ("drop-view-exposed-name", "user", "DROP VIEW profiles_profile;"),
    ("rename-table", "auth", "ALTER TABLE authentication_user RENAME TO accounts;"),
    ("rename-table-if-exists", "user",
     "ALTER TABLE IF EXISTS profiles_userprofile RENAME TO profiles;"),
    ("move-table", "auth", "ALTER TABLE authentication_user SET SCHEMA archive;"),
    ("move-table-qualified", "institution",
     "ALTER TABLE institution_schema.institutions_program SET SCHEMA shared_schema;"),
    # -- schemas
    ("drop-schema", "auth", "DROP SCHEMA auth_schema CASCADE;"),
    ("drop-schema-list", "auth", "DROP SCHEMA IF EXISTS scratch, auth_schema;"),
    ("rename-schema", "user", "ALTER SCHEMA user_schema RENAME TO users_schema;"),
    # -- blast radius
    ("drop-type-cascade", "auth", "DROP TYPE IF EXISTS email_address CASCADE;"),
    ("drop-domain-cascade", "user", "DROP DOMAIN phone_number CASCADE;"),
    ("drop-function-cascade", "institution", "DROP FUNCTION normalise_code(text) CASCADE;"),
    ("drop-owned", "auth", "DROP OWNED BY auth_service_owner;"),
    ("grant-secret", "auth",
     "GRANT SELECT ON authentication_user TO application_service_role;"),
    ("grant-column-secret", "auth",
     "GRANT SELECT (password_hash) ON authentication_user TO notification_service_role;"),
    ("grant-public", "auth", "GRANT SELECT ON authentication_session TO PUBLIC;"),
    ("revoke-reader", "auth", "REVOKE SELECT ON authentication_user FROM user_service_role;"),
    ("default-privileges", "auth",
     "ALTER DEFAULT PRIVILEGES IN SCHEMA auth_schema GRANT SELECT ON TABLES"
     " TO application_service_role;"),
    # -- DO blocks and functions
    ("do-drop-col", "auth",
     "DO $$\nBEGIN\n  ALTER TABLE authentication_user DROP COLUMN email;\nEND\n$$;"),
    ("do-nested-if", "auth",
     "DO $body$\nDECLARE n int;\nBEGIN\n  SELECT count(*) INTO n FROM authentication_user;\n"
     "  IF n >= 0 THEN\n    ALTER TABLE authentication_user RENAME COLUMN email TO mail;\n"
     "  END IF;\nEND\n$body$;"),
    ("do-language-clause", "user",
     "DO LANGUAGE plpgsql $$ BEGIN DROP TABLE profiles_userprofile; END $$;"),
    ("do-exception-block", "institution",
     "DO $$ BEGIN\n  BEGIN\n    ALTER TABLE institutions_institution DROP COLUMN website;\n"
     "  EXCEPTION WHEN undefined_column THEN NULL;\n  END;\nEND $$;"),
    ("do-loop", "auth",
     "DO $$ DECLARE r record; BEGIN FOR r IN SELECT 1 LOOP "
     "ALTER TABLE authentication_user ALTER COLUMN email TYPE text; END LOOP; END $$;"),
    ("do-execute-constant", "auth",
     "DO $$ BEGIN EXECUTE 'ALTER TABLE authentication_user DROP COLUMN email'; END $$;"),
    ("do-execute-built", "auth",
     "DO $$ DECLARE c text := 'email'; BEGIN\n"
     "  EXECUTE format('ALTER TABLE authentication_user DROP COLUMN %I', c);\nEND $$;"),
    ("do-execute-concat", "user",
     "DO $$ DECLARE t text := 'profiles_userprofile'; BEGIN\n"
     "  EXECUTE 'DROP TABLE ' || t;\nEND $$;"),
    ("do-for-execute", "auth",
     "DO $$ DECLARE r record; q text := 'select 1'; BEGIN\n"
     "  FOR r IN EXECUTE q LOOP NULL; END LOOP;\nEND $$;"),
    ("do-other-language", "auth", "DO LANGUAGE plpython3u $$ plpy.execute('select 1') $$;"),
    ("do-quoted-body", "auth", "DO 'BEGIN DROP TABLE authentication_user; END';"),
    ("function-called", "auth",
     "CREATE FUNCTION tidy() RETURNS void LANGUAGE plpgsql AS $$\n"
     "BEGIN ALTER TABLE authentication_user DROP COLUMN last_login; END $$;\n"
     "SELECT tidy();"),
    ("sql-function-called", "institution",
     "CREATE FUNCTION tidy() RETURNS void LANGUAGE sql AS\n"
     "  'ALTER TABLE institutions_program RENAME COLUMN code TO program_code';\n"
     "SELECT tidy();"),
    ("procedure-called", "user",
     "CREATE PROCEDURE tidy() LANGUAGE plpgsql AS $$\n"
     "DECLARE c text := 'bio'; BEGIN\n"
     "  EXECUTE format('ALTER TABLE profiles_userprofile DROP COLUMN %I', c);\nEND $$;\n"
     "CALL tidy();"),
    ("allow-marker-without-reason", "auth",
     "-- edulink:allow-dynamic-sql\n"
     "DO $$ DECLARE q text := 'select 1'; BEGIN EXECUTE q; END $$;"),
    ("ignore-contract-rule", "auth",
     "-- edulink:ignore contract/drop-exposed-column reason: we know\n"
     "ALTER TABLE authentication_user DROP COLUMN email;"),
    ("unparsable", "auth", "ALTER TABLE authentication_user DROP COLUMN;"),
]

SAFE: list[tuple[str, str, str]] = [
    # additive changes to exposed tables
    ("add-col", "auth", "ALTER TABLE authentication_user ADD COLUMN nickname text;"),
    ("add-col-default", "auth",
     "ALTER TABLE authentication_user ADD COLUMN locale text NOT NULL DEFAULT 'en';"),
    ("add-col-if-not-exists", "user",
     "ALTER TABLE profiles_userprofile ADD COLUMN IF NOT EXISTS avatar_url text;"),
    ("add-index-concurrently", "auth",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS authentication_user_last_login_idx\n"
     "  ON authentication_user (last_login);"),
    ("add-index", "institution",
     "CREATE INDEX institutions_program_level_idx ON institutions_program (level);"),
    ("add-check-not-valid", "auth",
     "ALTER TABLE authentication_user ADD CONSTRAINT email_has_at"
     " CHECK (email LIKE '%@%') NOT VALID;"),
    ("validate-constraint", "auth",
     "ALTER TABLE authentication_user VALIDATE CONSTRAINT email_has_at;"),
    ("set-default", "user",
     "ALTER TABLE profiles_userprofile ALTER COLUMN bio SET DEFAULT 'hello';"),
    ("drop-default", "user", "ALTER TABLE profiles_userprofile ALTER COLUMN bio DROP DEFAULT;"),
    ("set-not-null", "auth", "ALTER TABLE authentication_user ALTER COLUMN last_login"
     " SET NOT NULL;"),
    ("set-statistics", "auth",
     "ALTER TABLE authentication_user ALTER COLUMN email SET STATISTICS 500;"),
    ("comment-col", "auth", "COMMENT ON COLUMN authentication_user.email IS 'login name';"),
    ("rename-constraint", "institution",
     "ALTER TABLE institutions_program RENAME CONSTRAINT institutions_program_level_check"
     " TO program_level_check;"),
    ("rename-index", "auth",
     "ALTER INDEX authentication_user_email_key RENAME TO authentication_user_email_uq;"),
    ("truncate", "auth", "TRUNCATE authentication_user CASCADE;"),
    ("analyze", "auth", "ANALYZE authentication_user;"),
    ("update-backfill", "auth",
     "UPDATE authentication_user SET is_staff = false WHERE is_staff IS NULL;"),
    ("insert", "institution",
     "INSERT INTO institutions_institution (code, name) VALUES ('X', 'X');"),
    ("delete", "auth", "DELETE FROM authentication_user WHERE NOT is_active;"),
    # private columns and tables of an exposed table / service
    ("drop-private-col", "auth", "ALTER TABLE authentication_user DROP COLUMN password_hash;"),
    ("drop-private-col-updated", "auth",
     "ALTER TABLE authentication_user DROP COLUMN updated_at;"),
    ("rename-private-col", "auth",
     "ALTER TABLE authentication_user RENAME COLUMN created_at TO joined_at;"),
    ("retype-private-col", "user",
     "ALTER TABLE profiles_userpreference ALTER COLUMN value TYPE json;"),
    ("drop-private-table", "auth", "DROP TABLE authentication_session;"),
    ("drop-private-table-list", "auth",
     "DROP TABLE IF EXISTS authentication_userpermission, authentication_permission;"),
    ("rename-private-table", "user", "ALTER TABLE profiles_academicinfo RENAME TO academics;"),
    ("move-private-table", "auth", "ALTER TABLE authentication_session SET SCHEMA archive;"),
    ("drop-col-unexposing-service", "notification",
     "ALTER TABLE notifications_notification DROP COLUMN read_at;"),
    ("drop-table-unexposing-service", "application",
     "DROP TABLE applications_workflowstate CASCADE;"),
    ("drop-schema-unexposed", "notification", "DROP SCHEMA IF EXISTS scratch;"),
    ("other-service-same-table-name", "user",
     "ALTER TABLE authentication_user DROP COLUMN email;"),
    ("quoted-different-case", "auth",
     'ALTER TABLE "Authentication_User" DROP COLUMN email;'),
    ("other-schema-qualified", "auth",
     "ALTER TABLE archive.authentication_user DROP COLUMN email;"),
    ("drop-index-cascade", "auth", "DROP INDEX IF EXISTS authentication_user_email_key CASCADE;"),
    ("drop-sequence-cascade", "auth", "DROP SEQUENCE IF EXISTS old_seq CASCADE;"),
    ("drop-type-no-cascade", "auth", "DROP TYPE IF EXISTS old_type;"),
    # the expand/contract recipes
    ("expand-add-and-backfill", "auth",
     "ALTER TABLE authentication_user ADD COLUMN email_normalised text;\n"
     "UPDATE authentication_user SET email_normalised = lower(email);"),
    ("compat-view", "auth",
     "CREATE VIEW authentication_user_v2 AS SELECT id, email AS login FROM"
     " authentication_user;"),
    ("compat-view-replace", "user",
     "CREATE OR REPLACE VIEW profiles_public AS SELECT id, first_name FROM"
     " profiles_userprofile;"),
    ("trigger-sync", "auth",
     "CREATE FUNCTION sync_email() RETURNS trigger LANGUAGE plpgsql AS $$\n"
     "BEGIN NEW.email_normalised := lower(NEW.email); RETURN NEW; END $$;\n"
     "CREATE TRIGGER sync_email BEFORE INSERT OR UPDATE ON authentication_user\n"
     "  FOR EACH ROW EXECUTE FUNCTION sync_email();"),
    ("new-table", "institution",
     "CREATE TABLE institutions_campus (id uuid PRIMARY KEY, institution_id uuid NOT NULL"
     " REFERENCES institutions_institution (id), name text NOT NULL);"),
    ("new-table-then-drop", "institution",
     "CREATE TABLE tmp_import (id int);\nDROP TABLE tmp_import;"),
    ("rls-policy", "user",
     "CREATE POLICY read_own ON profiles_academicinfo USING (true);"),
    # DO blocks and functions that do harmless things
    ("do-backfill", "auth",
     "DO $$\nBEGIN\n  UPDATE authentication_user SET is_staff = false WHERE is_staff IS NULL;\n"
     "END $$;"),
    ("do-add-column", "user",
     "DO $$ BEGIN\n  ALTER TABLE profiles_userprofile ADD COLUMN IF NOT EXISTS pronouns text;\n"
     "END $$;"),
    ("do-drop-private", "auth",
     "DO $$ BEGIN DROP TABLE IF EXISTS authentication_session; END $$;"),
    ("do-execute-constant-safe", "auth",
     "DO $$ BEGIN EXECUTE 'ALTER TABLE authentication_user ADD COLUMN note text'; END $$;"),
    ("do-dynamic-with-reason", "auth",
     "-- edulink:allow-dynamic-sql reason: only creates monthly partitions of a private table\n"
     "DO $$ DECLARE m text := to_char(now(), 'YYYY_MM'); BEGIN\n"
     "  EXECUTE format('CREATE TABLE IF NOT EXISTS login_events_%s (id int)', m);\nEND $$;"),
    ("function-not-called", "auth",
     "CREATE FUNCTION purge(t text) RETURNS void LANGUAGE plpgsql AS $$\n"
     "BEGIN EXECUTE format('TRUNCATE %I', t); END $$;"),
    ("function-called-safe", "auth",
     "CREATE FUNCTION touch() RETURNS void LANGUAGE sql AS\n"
     "  'UPDATE authentication_user SET last_login = now() WHERE false';\nSELECT touch();"),
    ("grant-own-runtime", "auth",
     "GRANT SELECT ON authentication_permission TO auth_service_role;"),
    ("search-path-own", "auth",
     "SET search_path = auth_schema, shared_schema;\nCREATE TABLE t1 (id int);"),
    ("json-table-pg17", "user",
     "CREATE VIEW prefs AS SELECT jt.* FROM profiles_userpreference p,\n"
     "  JSON_TABLE(p.value, '$' COLUMNS (x int PATH '$.x')) jt;"),
    ("virtual-generated-pg18", "auth",
     "ALTER TABLE authentication_user ADD COLUMN email_domain text"
     " GENERATED ALWAYS AS (split_part(email, '@', 2)) VIRTUAL;"),
    ("not-enforced-pg18", "institution",
     "ALTER TABLE institutions_program ADD CONSTRAINT p_dur CHECK (duration_years > 0)"
     " NOT ENFORCED;"),
    ("ignore-squawk-with-reason", "auth",
     "-- edulink:ignore squawk/require-concurrent-index-creation reason: tiny table\n"
     "CREATE INDEX authentication_permission_name_idx ON authentication_permission (name);"),
]

BREAKING += [
    ("marker-inside-string-is-no-marker", "auth",
     "SELECT 'x\n-- edulink:allow-dynamic-sql reason: hidden in a string';\n"
     "DO $$ DECLARE q text := 'select 1'; BEGIN EXECUTE q; END $$;"),
    ("marker-inside-do-body-is-no-marker", "auth",
     "DO $$ DECLARE q text := 'select 1'; BEGIN\n"
     "-- edulink:allow-dynamic-sql reason: inside the body\n  EXECUTE q; END $$;"),
    ("function-called-from-do", "auth",
     "CREATE FUNCTION tidy() RETURNS void LANGUAGE sql AS\n"
     "  'DROP TABLE authentication_user';\nDO $$ BEGIN PERFORM tidy(); END $$;"),
    ("nested-do-in-execute", "auth",
     "DO $a$ BEGIN EXECUTE 'DO $b$ BEGIN ALTER TABLE authentication_user DROP COLUMN id;"
     " END $b$'; END $a$;"),
    ("unknown-marker", "auth", "-- edulink:allow-everything reason: please\nSELECT 1;"),
]
SAFE += [
    ("block-comment-marker", "auth",
     "/* edulink:allow-dynamic-sql reason: builds partition names only */\n"
     "DO $$ DECLARE q text := 'select 1'; BEGIN EXECUTE q; END $$;"),
]
