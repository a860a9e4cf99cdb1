-- edulink-db: PostgreSQL schema and role setup.
-- GENERATED from the topology by `edulink-db sql --dialect postgresql`; do not edit.
-- Services: auth (auth_schema), user (user_schema), institution (institution_schema), notification (notification_schema), application (application_schema), internship (internship_schema)
--
-- Run as a role with CREATEROLE and CREATE on the database (Supabase's `postgres`
-- user is enough; superuser is not needed). Idempotent: safe to run again.
-- Runtime and migrator roles are created WITHOUT passwords: `edulink-db provision`
-- sets them (SCRAM verifiers computed client-side), or set them yourself with psql's
-- \password <role>.  `edulink-db provision` additionally checks each service
-- can log in, and `edulink-db verify` compares the result with the topology.
--
-- Roles: every role created here is marked with the comment
-- 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment'.
-- The script stops (and changes nothing) if a role it would create already exists
-- without that mark: it belongs to someone else. Adopt one deliberately with
-- `edulink-db provision --adopt ROLE`.
--
-- Connection limits: a service's `connection_limit` from the topology is written
-- below as a number. For the others the script cannot know this server's
-- max_connections, so it computes the limit when it runs, on the server itself:
-- (max_connections - superuser_reserved_connections - reserved_connections
--  - headroom) / number of such services, headroom = max(10, 5% of the rest),
-- the same formula `edulink-db provision` and `edulink-db verify` use.

BEGIN;

-- Serialise concurrent provisioning runs (released at COMMIT).
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('edulink-db:provision'));

-- Refuse to touch roles edulink-db did not create (they belong to someone else).
DO $do$
DECLARE foreign_roles text;
BEGIN
  SELECT pg_catalog.string_agg(rolname, ', ' ORDER BY rolname) INTO foreign_roles
    FROM pg_catalog.pg_roles WHERE rolname = ANY('{auth_service_owner,user_service_owner,institution_service_owner,notification_service_owner,application_service_owner,internship_service_owner,shared_schema_owner,auth_service_role,user_service_role,institution_service_role,notification_service_role,application_service_role,internship_service_role,auth_service_migrator,user_service_migrator,institution_service_migrator,notification_service_migrator,application_service_migrator,internship_service_migrator}'::pg_catalog.name[])
     AND NOT coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false);
  IF foreign_roles IS NOT NULL THEN
    RAISE EXCEPTION 'roles exist that edulink-db did not create: %', foreign_roles
      USING HINT = 'Rename them in the topology, or adopt each deliberately with '
                   'edulink-db provision --adopt ROLE.';
  END IF;
END $do$;

-- Owner role auth_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'auth_service_owner') THEN
    CREATE ROLE "auth_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "auth_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'auth_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'auth_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as auth_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "auth_service_owner" TO CURRENT_USER;

-- Owner role user_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'user_service_owner') THEN
    CREATE ROLE "user_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "user_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'user_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'user_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as user_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "user_service_owner" TO CURRENT_USER;

-- Owner role institution_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'institution_service_owner') THEN
    CREATE ROLE "institution_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "institution_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'institution_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'institution_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as institution_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "institution_service_owner" TO CURRENT_USER;

-- Owner role notification_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'notification_service_owner') THEN
    CREATE ROLE "notification_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "notification_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'notification_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'notification_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as notification_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "notification_service_owner" TO CURRENT_USER;

-- Owner role application_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'application_service_owner') THEN
    CREATE ROLE "application_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "application_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'application_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'application_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as application_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "application_service_owner" TO CURRENT_USER;

-- Owner role internship_service_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'internship_service_owner') THEN
    CREATE ROLE "internship_service_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "internship_service_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'internship_service_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'internship_service_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as internship_service_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "internship_service_owner" TO CURRENT_USER;

-- Owner role shared_schema_owner: owns a schema, cannot log in.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'shared_schema_owner') THEN
    CREATE ROLE "shared_schema_owner" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "shared_schema_owner" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'shared_schema_owner' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'shared_schema_owner';
  END IF;
END $do$;

-- Let the provisioning admin act as shared_schema_owner (needed on PostgreSQL 16+ for CREATE SCHEMA AUTHORIZATION and ALTER DEFAULT PRIVILEGES FOR ROLE).
GRANT "shared_schema_owner" TO CURRENT_USER;

-- Runtime role of service auth: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'auth_service_role') THEN
    CREATE ROLE "auth_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "auth_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'auth_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'auth_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "auth_service_role" SET search_path = "auth_schema", "shared_schema";

-- idle_in_transaction_session_timeout for auth_service_role, applied at login.
ALTER ROLE "auth_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for auth_service_role, applied at login.
ALTER ROLE "auth_service_role" SET "statement_timeout" = '30s';

-- Runtime role of service user: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'user_service_role') THEN
    CREATE ROLE "user_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "user_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'user_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'user_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "user_service_role" SET search_path = "user_schema", "shared_schema";

-- idle_in_transaction_session_timeout for user_service_role, applied at login.
ALTER ROLE "user_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for user_service_role, applied at login.
ALTER ROLE "user_service_role" SET "statement_timeout" = '30s';

-- Runtime role of service institution: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'institution_service_role') THEN
    CREATE ROLE "institution_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "institution_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'institution_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'institution_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "institution_service_role" SET search_path = "institution_schema", "shared_schema";

-- idle_in_transaction_session_timeout for institution_service_role, applied at login.
ALTER ROLE "institution_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for institution_service_role, applied at login.
ALTER ROLE "institution_service_role" SET "statement_timeout" = '30s';

-- Runtime role of service notification: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'notification_service_role') THEN
    CREATE ROLE "notification_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "notification_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'notification_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'notification_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "notification_service_role" SET search_path = "notification_schema", "shared_schema";

-- idle_in_transaction_session_timeout for notification_service_role, applied at login.
ALTER ROLE "notification_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for notification_service_role, applied at login.
ALTER ROLE "notification_service_role" SET "statement_timeout" = '30s';

-- Runtime role of service application: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'application_service_role') THEN
    CREATE ROLE "application_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "application_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'application_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'application_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "application_service_role" SET search_path = "application_schema", "shared_schema";

-- idle_in_transaction_session_timeout for application_service_role, applied at login.
ALTER ROLE "application_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for application_service_role, applied at login.
ALTER ROLE "application_service_role" SET "statement_timeout" = '30s';

-- Runtime role of service internship: logs in, owns nothing, never bypasses RLS.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'internship_service_role') THEN
    CREATE ROLE "internship_service_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "internship_service_role" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'internship_service_role' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'internship_service_role';
  END IF;
END $do$;

-- search_path from the role, not the session: survives transaction poolers.
ALTER ROLE "internship_service_role" SET search_path = "internship_schema", "shared_schema";

-- idle_in_transaction_session_timeout for internship_service_role, applied at login.
ALTER ROLE "internship_service_role" SET "idle_in_transaction_session_timeout" = '60s';

-- statement_timeout for internship_service_role, applied at login.
ALTER ROLE "internship_service_role" SET "statement_timeout" = '30s';

-- Connection budget of auth_service_role, user_service_role, institution_service_role, notification_service_role, application_service_role, internship_service_role: derived from this server's max_connections (see the header).
DO $do$
DECLARE per_role int; r text;
BEGIN
  SELECT b.derived INTO per_role
    FROM (SELECT mc, sr, rc, usable, headroom, GREATEST(1, (usable - headroom - 0) / 6) FROM (SELECT mc, sr, rc, usable, GREATEST(10, (usable * 5 + 99) / 100) AS headroom FROM (SELECT mc, sr, rc, mc - sr - rc AS usable FROM (SELECT pg_catalog.current_setting('max_connections')::int, pg_catalog.current_setting('superuser_reserved_connections')::int, coalesce(pg_catalog.current_setting('reserved_connections', true)::int, 0)) AS x(mc, sr, rc)) AS u) AS b) AS b(mc, sr, rc, usable, headroom, derived);
  FOREACH r IN ARRAY '{auth_service_role,user_service_role,institution_service_role,notification_service_role,application_service_role,internship_service_role}'::text[] LOOP
    EXECUTE pg_catalog.format('ALTER ROLE %I CONNECTION LIMIT %s', r, per_role);
  END LOOP;
END $do$;

-- Migrator role of service auth: logs in to run migrations, acts only as auth_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'auth_service_migrator') THEN
    CREATE ROLE "auth_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "auth_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'auth_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'auth_service_migrator';
  END IF;
END $do$;

-- auth_service_migrator's one membership: auth_service_owner.
GRANT "auth_service_owner" TO "auth_service_migrator";

-- auth_service_migrator is auth_service_owner from login on (and after RESET ROLE).
ALTER ROLE "auth_service_migrator" SET role = 'auth_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "auth_service_migrator" SET search_path = "auth_schema", "shared_schema";

-- Migrator role of service user: logs in to run migrations, acts only as user_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'user_service_migrator') THEN
    CREATE ROLE "user_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "user_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'user_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'user_service_migrator';
  END IF;
END $do$;

-- user_service_migrator's one membership: user_service_owner.
GRANT "user_service_owner" TO "user_service_migrator";

-- user_service_migrator is user_service_owner from login on (and after RESET ROLE).
ALTER ROLE "user_service_migrator" SET role = 'user_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "user_service_migrator" SET search_path = "user_schema", "shared_schema";

-- Migrator role of service institution: logs in to run migrations, acts only as institution_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'institution_service_migrator') THEN
    CREATE ROLE "institution_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "institution_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'institution_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'institution_service_migrator';
  END IF;
END $do$;

-- institution_service_migrator's one membership: institution_service_owner.
GRANT "institution_service_owner" TO "institution_service_migrator";

-- institution_service_migrator is institution_service_owner from login on (and after RESET ROLE).
ALTER ROLE "institution_service_migrator" SET role = 'institution_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "institution_service_migrator" SET search_path = "institution_schema", "shared_schema";

-- Migrator role of service notification: logs in to run migrations, acts only as notification_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'notification_service_migrator') THEN
    CREATE ROLE "notification_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "notification_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'notification_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'notification_service_migrator';
  END IF;
END $do$;

-- notification_service_migrator's one membership: notification_service_owner.
GRANT "notification_service_owner" TO "notification_service_migrator";

-- notification_service_migrator is notification_service_owner from login on (and after RESET ROLE).
ALTER ROLE "notification_service_migrator" SET role = 'notification_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "notification_service_migrator" SET search_path = "notification_schema", "shared_schema";

-- Migrator role of service application: logs in to run migrations, acts only as application_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'application_service_migrator') THEN
    CREATE ROLE "application_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "application_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'application_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'application_service_migrator';
  END IF;
END $do$;

-- application_service_migrator's one membership: application_service_owner.
GRANT "application_service_owner" TO "application_service_migrator";

-- application_service_migrator is application_service_owner from login on (and after RESET ROLE).
ALTER ROLE "application_service_migrator" SET role = 'application_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "application_service_migrator" SET search_path = "application_schema", "shared_schema";

-- Migrator role of service internship: logs in to run migrations, acts only as internship_service_owner.
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'internship_service_migrator') THEN
    CREATE ROLE "internship_service_migrator" LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    COMMENT ON ROLE "internship_service_migrator" IS 'edulink-db managed: created by edulink-db provision; provisioning refuses roles without this comment';
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                 WHERE rolname = 'internship_service_migrator' AND coalesce(pg_catalog.starts_with(pg_catalog.shobj_description(oid, 'pg_authid'), 'edulink-db managed'), false)) THEN
    RAISE EXCEPTION 'role % was created concurrently by someone else', 'internship_service_migrator';
  END IF;
END $do$;

-- internship_service_migrator's one membership: internship_service_owner.
GRANT "internship_service_owner" TO "internship_service_migrator";

-- internship_service_migrator is internship_service_owner from login on (and after RESET ROLE).
ALTER ROLE "internship_service_migrator" SET role = 'internship_service_owner';

-- Unqualified names in migrations land in the service's schema.
ALTER ROLE "internship_service_migrator" SET search_path = "internship_schema", "shared_schema";

-- Schema auth_schema, owned by auth_service_owner.
CREATE SCHEMA IF NOT EXISTS "auth_schema" AUTHORIZATION "auth_service_owner";

-- Re-assert the owner of auth_schema if it existed before.
ALTER SCHEMA "auth_schema" OWNER TO "auth_service_owner";

-- No default access to auth_schema for PUBLIC.
REVOKE ALL ON SCHEMA "auth_schema" FROM PUBLIC;

-- Schema user_schema, owned by user_service_owner.
CREATE SCHEMA IF NOT EXISTS "user_schema" AUTHORIZATION "user_service_owner";

-- Re-assert the owner of user_schema if it existed before.
ALTER SCHEMA "user_schema" OWNER TO "user_service_owner";

-- No default access to user_schema for PUBLIC.
REVOKE ALL ON SCHEMA "user_schema" FROM PUBLIC;

-- Schema institution_schema, owned by institution_service_owner.
CREATE SCHEMA IF NOT EXISTS "institution_schema" AUTHORIZATION "institution_service_owner";

-- Re-assert the owner of institution_schema if it existed before.
ALTER SCHEMA "institution_schema" OWNER TO "institution_service_owner";

-- No default access to institution_schema for PUBLIC.
REVOKE ALL ON SCHEMA "institution_schema" FROM PUBLIC;

-- Schema notification_schema, owned by notification_service_owner.
CREATE SCHEMA IF NOT EXISTS "notification_schema" AUTHORIZATION "notification_service_owner";

-- Re-assert the owner of notification_schema if it existed before.
ALTER SCHEMA "notification_schema" OWNER TO "notification_service_owner";

-- No default access to notification_schema for PUBLIC.
REVOKE ALL ON SCHEMA "notification_schema" FROM PUBLIC;

-- Schema application_schema, owned by application_service_owner.
CREATE SCHEMA IF NOT EXISTS "application_schema" AUTHORIZATION "application_service_owner";

-- Re-assert the owner of application_schema if it existed before.
ALTER SCHEMA "application_schema" OWNER TO "application_service_owner";

-- No default access to application_schema for PUBLIC.
REVOKE ALL ON SCHEMA "application_schema" FROM PUBLIC;

-- Schema internship_schema, owned by internship_service_owner.
CREATE SCHEMA IF NOT EXISTS "internship_schema" AUTHORIZATION "internship_service_owner";

-- Re-assert the owner of internship_schema if it existed before.
ALTER SCHEMA "internship_schema" OWNER TO "internship_service_owner";

-- No default access to internship_schema for PUBLIC.
REVOKE ALL ON SCHEMA "internship_schema" FROM PUBLIC;

-- Schema shared_schema, owned by shared_schema_owner.
CREATE SCHEMA IF NOT EXISTS "shared_schema" AUTHORIZATION "shared_schema_owner";

-- Re-assert the owner of shared_schema if it existed before.
ALTER SCHEMA "shared_schema" OWNER TO "shared_schema_owner";

-- No default access to shared_schema for PUBLIC.
REVOKE ALL ON SCHEMA "shared_schema" FROM PUBLIC;

-- auth_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "auth_schema" TO "auth_service_role";

-- auth_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "auth_schema" TO "auth_service_role";

-- auth_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "auth_schema" TO "auth_service_role";

-- Tables auth_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "auth_service_owner" IN SCHEMA "auth_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "auth_service_role";

-- Sequences auth_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "auth_service_owner" IN SCHEMA "auth_schema" GRANT USAGE, SELECT ON SEQUENCES TO "auth_service_role";

-- No PUBLIC EXECUTE on the routines in auth_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "auth_schema" FROM PUBLIC;

-- ...nor on the routines auth_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "auth_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- auth_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "auth_schema" TO "auth_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "auth_service_owner" IN SCHEMA "auth_schema" GRANT EXECUTE ON ROUTINES TO "auth_service_role";

-- Readers of auth_schema (user_service_role, notification_service_role, application_service_role) get no table-level SELECT: drop any, with the column grants it carries; the exposure is granted below.
REVOKE SELECT ON ALL TABLES IN SCHEMA "auth_schema" FROM "user_service_role", "notification_service_role", "application_service_role";

-- ...and no SELECT on tables auth_service_owner creates later (the migration runner grants the exposed columns after each file).
ALTER DEFAULT PRIVILEGES FOR ROLE "auth_service_owner" IN SCHEMA "auth_schema" REVOKE SELECT ON TABLES FROM "user_service_role", "notification_service_role", "application_service_role";

-- Cross-service readers of auth_schema: user_service_role, notification_service_role, application_service_role.
GRANT USAGE ON SCHEMA "auth_schema" TO "user_service_role", "notification_service_role", "application_service_role";

-- auth exposes authentication_user (id, email, is_active, is_staff, last_login) to user_service_role, notification_service_role, application_service_role.
DO $do$
DECLARE cols text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO cols FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid = pg_catalog.to_regclass('"auth_schema"."authentication_user"') AND a.attnum > 0
     AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
     AND NOT a.attisdropped AND a.attname = ANY('{id,email,is_active,is_staff,last_login}'::pg_catalog.name[]);
  IF cols IS NOT NULL THEN
    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, '"auth_schema"."authentication_user"', '"user_service_role", "notification_service_role", "application_service_role"');
  END IF;
END $do$;

-- The migration history in auth_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"auth_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "auth_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- user_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "user_schema" TO "user_service_role";

-- user_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "user_schema" TO "user_service_role";

-- user_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "user_schema" TO "user_service_role";

-- Tables user_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "user_service_owner" IN SCHEMA "user_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "user_service_role";

-- Sequences user_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "user_service_owner" IN SCHEMA "user_schema" GRANT USAGE, SELECT ON SEQUENCES TO "user_service_role";

-- No PUBLIC EXECUTE on the routines in user_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "user_schema" FROM PUBLIC;

-- ...nor on the routines user_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "user_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- user_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "user_schema" TO "user_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "user_service_owner" IN SCHEMA "user_schema" GRANT EXECUTE ON ROUTINES TO "user_service_role";

-- Readers of user_schema (notification_service_role, application_service_role, internship_service_role) get no table-level SELECT: drop any, with the column grants it carries; the exposure is granted below.
REVOKE SELECT ON ALL TABLES IN SCHEMA "user_schema" FROM "notification_service_role", "application_service_role", "internship_service_role";

-- ...and no SELECT on tables user_service_owner creates later (the migration runner grants the exposed columns after each file).
ALTER DEFAULT PRIVILEGES FOR ROLE "user_service_owner" IN SCHEMA "user_schema" REVOKE SELECT ON TABLES FROM "notification_service_role", "application_service_role", "internship_service_role";

-- Cross-service readers of user_schema: notification_service_role, application_service_role, internship_service_role.
GRANT USAGE ON SCHEMA "user_schema" TO "notification_service_role", "application_service_role", "internship_service_role";

-- user exposes profiles_userprofile (id, user_id, first_name, last_name, phone, bio, created_at, updated_at) to notification_service_role, application_service_role, internship_service_role.
DO $do$
DECLARE cols text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO cols FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid = pg_catalog.to_regclass('"user_schema"."profiles_userprofile"') AND a.attnum > 0
     AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
     AND NOT a.attisdropped AND a.attname = ANY('{id,user_id,first_name,last_name,phone,bio,created_at,updated_at}'::pg_catalog.name[]);
  IF cols IS NOT NULL THEN
    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, '"user_schema"."profiles_userprofile"', '"notification_service_role", "application_service_role", "internship_service_role"');
  END IF;
END $do$;

-- user exposes profiles_profile (id, user_id, display_name) to notification_service_role, application_service_role, internship_service_role.
DO $do$
DECLARE cols text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO cols FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid = pg_catalog.to_regclass('"user_schema"."profiles_profile"') AND a.attnum > 0
     AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
     AND NOT a.attisdropped AND a.attname = ANY('{id,user_id,display_name}'::pg_catalog.name[]);
  IF cols IS NOT NULL THEN
    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, '"user_schema"."profiles_profile"', '"notification_service_role", "application_service_role", "internship_service_role"');
  END IF;
END $do$;

-- The migration history in user_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"user_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "user_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- institution_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "institution_schema" TO "institution_service_role";

-- institution_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "institution_schema" TO "institution_service_role";

-- institution_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "institution_schema" TO "institution_service_role";

-- Tables institution_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "institution_service_owner" IN SCHEMA "institution_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "institution_service_role";

-- Sequences institution_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "institution_service_owner" IN SCHEMA "institution_schema" GRANT USAGE, SELECT ON SEQUENCES TO "institution_service_role";

-- No PUBLIC EXECUTE on the routines in institution_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "institution_schema" FROM PUBLIC;

-- ...nor on the routines institution_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "institution_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- institution_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "institution_schema" TO "institution_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "institution_service_owner" IN SCHEMA "institution_schema" GRANT EXECUTE ON ROUTINES TO "institution_service_role";

-- Readers of institution_schema (user_service_role, notification_service_role, application_service_role, internship_service_role) get no table-level SELECT: drop any, with the column grants it carries; the exposure is granted below.
REVOKE SELECT ON ALL TABLES IN SCHEMA "institution_schema" FROM "user_service_role", "notification_service_role", "application_service_role", "internship_service_role";

-- ...and no SELECT on tables institution_service_owner creates later (the migration runner grants the exposed columns after each file).
ALTER DEFAULT PRIVILEGES FOR ROLE "institution_service_owner" IN SCHEMA "institution_schema" REVOKE SELECT ON TABLES FROM "user_service_role", "notification_service_role", "application_service_role", "internship_service_role";

-- Cross-service readers of institution_schema: user_service_role, notification_service_role, application_service_role, internship_service_role.
GRANT USAGE ON SCHEMA "institution_schema" TO "user_service_role", "notification_service_role", "application_service_role", "internship_service_role";

-- institution exposes institutions_institution (id, code, name, kind, country, website, created_at) to user_service_role, notification_service_role, application_service_role, internship_service_role.
DO $do$
DECLARE cols text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO cols FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid = pg_catalog.to_regclass('"institution_schema"."institutions_institution"') AND a.attnum > 0
     AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
     AND NOT a.attisdropped AND a.attname = ANY('{id,code,name,kind,country,website,created_at}'::pg_catalog.name[]);
  IF cols IS NOT NULL THEN
    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, '"institution_schema"."institutions_institution"', '"user_service_role", "notification_service_role", "application_service_role", "internship_service_role"');
  END IF;
END $do$;

-- institution exposes institutions_program (id, institution_id, code, name, level, duration_years) to user_service_role, notification_service_role, application_service_role, internship_service_role.
DO $do$
DECLARE cols text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO cols FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid = pg_catalog.to_regclass('"institution_schema"."institutions_program"') AND a.attnum > 0
     AND c.relkind = ANY('{r,p,v,m,f}'::"char"[])
     AND NOT a.attisdropped AND a.attname = ANY('{id,institution_id,code,name,level,duration_years}'::pg_catalog.name[]);
  IF cols IS NOT NULL THEN
    EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO %s', cols, '"institution_schema"."institutions_program"', '"user_service_role", "notification_service_role", "application_service_role", "internship_service_role"');
  END IF;
END $do$;

-- The migration history in institution_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"institution_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "institution_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- notification_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "notification_schema" TO "notification_service_role";

-- notification_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "notification_schema" TO "notification_service_role";

-- notification_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "notification_schema" TO "notification_service_role";

-- Tables notification_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "notification_service_owner" IN SCHEMA "notification_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "notification_service_role";

-- Sequences notification_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "notification_service_owner" IN SCHEMA "notification_schema" GRANT USAGE, SELECT ON SEQUENCES TO "notification_service_role";

-- No PUBLIC EXECUTE on the routines in notification_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "notification_schema" FROM PUBLIC;

-- ...nor on the routines notification_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "notification_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- notification_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "notification_schema" TO "notification_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "notification_service_owner" IN SCHEMA "notification_schema" GRANT EXECUTE ON ROUTINES TO "notification_service_role";

-- The migration history in notification_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"notification_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "notification_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- application_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "application_schema" TO "application_service_role";

-- application_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "application_schema" TO "application_service_role";

-- application_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "application_schema" TO "application_service_role";

-- Tables application_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "application_service_owner" IN SCHEMA "application_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "application_service_role";

-- Sequences application_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "application_service_owner" IN SCHEMA "application_schema" GRANT USAGE, SELECT ON SEQUENCES TO "application_service_role";

-- No PUBLIC EXECUTE on the routines in application_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "application_schema" FROM PUBLIC;

-- ...nor on the routines application_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "application_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- application_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "application_schema" TO "application_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "application_service_owner" IN SCHEMA "application_schema" GRANT EXECUTE ON ROUTINES TO "application_service_role";

-- Readers of application_schema (notification_service_role) get no table-level SELECT: drop any, with the column grants it carries; the exposure is granted below.
REVOKE SELECT ON ALL TABLES IN SCHEMA "application_schema" FROM "notification_service_role";

-- ...and no SELECT on tables application_service_owner creates later (the migration runner grants the exposed columns after each file).
ALTER DEFAULT PRIVILEGES FOR ROLE "application_service_owner" IN SCHEMA "application_schema" REVOKE SELECT ON TABLES FROM "notification_service_role";

-- application exposes nothing: its readers need no USAGE on application_schema.
REVOKE USAGE ON SCHEMA "application_schema" FROM "notification_service_role";

-- The migration history in application_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"application_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "application_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- internship_service_role may use its own schema (no CREATE: no DDL).
GRANT USAGE ON SCHEMA "internship_schema" TO "internship_service_role";

-- internship_service_role reads and writes its own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "internship_schema" TO "internship_service_role";

-- internship_service_role uses its own sequences.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "internship_schema" TO "internship_service_role";

-- Tables internship_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "internship_service_owner" IN SCHEMA "internship_schema" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "internship_service_role";

-- Sequences internship_service_owner creates later are covered too.
ALTER DEFAULT PRIVILEGES FOR ROLE "internship_service_owner" IN SCHEMA "internship_schema" GRANT USAGE, SELECT ON SEQUENCES TO "internship_service_role";

-- No PUBLIC EXECUTE on the routines in internship_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "internship_schema" FROM PUBLIC;

-- ...nor on the routines internship_service_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "internship_service_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- internship_service_role may run its own service's routines.
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA "internship_schema" TO "internship_service_role";

-- ...including routines created later.
ALTER DEFAULT PRIVILEGES FOR ROLE "internship_service_owner" IN SCHEMA "internship_schema" GRANT EXECUTE ON ROUTINES TO "internship_service_role";

-- Readers of internship_schema (notification_service_role, application_service_role) get no table-level SELECT: drop any, with the column grants it carries; the exposure is granted below.
REVOKE SELECT ON ALL TABLES IN SCHEMA "internship_schema" FROM "notification_service_role", "application_service_role";

-- ...and no SELECT on tables internship_service_owner creates later (the migration runner grants the exposed columns after each file).
ALTER DEFAULT PRIVILEGES FOR ROLE "internship_service_owner" IN SCHEMA "internship_schema" REVOKE SELECT ON TABLES FROM "notification_service_role", "application_service_role";

-- internship exposes nothing: its readers need no USAGE on internship_schema.
REVOKE USAGE ON SCHEMA "internship_schema" FROM "notification_service_role", "application_service_role";

-- The migration history in internship_schema is the owner's alone: undo what the schema-wide grants just gave (same transaction, so never visible).
DO $do$ BEGIN
  IF pg_catalog.to_regclass('"internship_schema"."edulink_schema_history"') IS NOT NULL THEN
    REVOKE ALL ON TABLE "internship_schema"."edulink_schema_history" FROM PUBLIC, "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";
  END IF;
END $do$;

-- Every service (runtime and owner role) may use the shared schema.
GRANT USAGE ON SCHEMA "shared_schema" TO "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role", "auth_service_owner", "user_service_owner", "institution_service_owner", "notification_service_owner", "application_service_owner", "internship_service_owner";

-- Create shared objects as shared_schema_owner, so it owns them.
SET LOCAL ROLE "shared_schema_owner";

-- The append-only audit log.
CREATE TABLE IF NOT EXISTS "shared_schema"."audit_log" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    db_role name NOT NULL DEFAULT CURRENT_USER,
    service_name text NOT NULL,
    action text NOT NULL,
    resource_type text NOT NULL,
    resource_id text,
    user_id text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Time-ordered appends: a BRIN index is tiny and fits the access pattern.
CREATE INDEX IF NOT EXISTS "audit_log_occurred_at_brin" ON "shared_schema"."audit_log" USING brin (occurred_at);

-- RLS helper: the request's user id, or NULL when none is set (policies then match nothing: fail closed).
CREATE OR REPLACE FUNCTION "shared_schema"."current_user_id"() RETURNS text
    LANGUAGE sql STABLE
    AS $fn$ SELECT NULLIF(pg_catalog.current_setting('app.current_user_id', true), '') $fn$;

-- Back to the provisioning admin.
RESET ROLE;

-- Only services may call the RLS helper.
REVOKE ALL ON FUNCTION "shared_schema"."current_user_id"() FROM PUBLIC;

-- ...runtime roles in policies, owner roles when creating them.
GRANT EXECUTE ON FUNCTION "shared_schema"."current_user_id"() TO "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role", "auth_service_owner", "user_service_owner", "institution_service_owner", "notification_service_owner", "application_service_owner", "internship_service_owner";

-- No PUBLIC EXECUTE on the routines in shared_schema: a reader would run this service's code with its own privileges.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA "shared_schema" FROM PUBLIC;

-- ...nor on the routines shared_schema_owner creates later.
ALTER DEFAULT PRIVILEGES FOR ROLE "shared_schema_owner" REVOKE EXECUTE ON ROUTINES FROM PUBLIC;

-- No PUBLIC access to the audit log.
REVOKE ALL ON TABLE "shared_schema"."audit_log" FROM PUBLIC;

-- Services may append to the audit log; no UPDATE, DELETE or TRUNCATE, and id/occurred_at/db_role are always set by the database.
GRANT INSERT ("service_name", "action", "resource_type", "resource_id", "user_id", "details") ON TABLE "shared_schema"."audit_log" TO "auth_service_role", "user_service_role", "institution_service_role", "notification_service_role", "application_service_role", "internship_service_role";

COMMIT;
