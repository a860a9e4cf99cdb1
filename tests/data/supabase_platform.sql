-- What a Supabase project holds besides the user's schemas, in miniature: the platform's
-- roles (cluster-wide, created once per server) and schemas with a few of their tables,
-- owned by platform roles, as the supabase/postgres image sets them up.  Run as a
-- superuser in the project's database; tests/sample_schema.py does, then creates the
-- non-superuser admin that Supabase hands its users (``postgres`` there).

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
        ('anon', 'NOLOGIN NOINHERIT'),
        ('authenticated', 'NOLOGIN NOINHERIT'),
        ('service_role', 'NOLOGIN NOINHERIT BYPASSRLS'),
        ('authenticator', 'LOGIN NOINHERIT'),
        ('supabase_admin', 'LOGIN SUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS'),
        ('supabase_auth_admin', 'LOGIN NOINHERIT CREATEROLE'),
        ('supabase_storage_admin', 'LOGIN NOINHERIT CREATEROLE'),
        ('supabase_realtime_admin', 'NOLOGIN NOINHERIT'),
        ('supabase_replication_admin', 'LOGIN REPLICATION'),
        ('supabase_read_only_user', 'LOGIN BYPASSRLS'),
        ('dashboard_user', 'NOLOGIN CREATEROLE CREATEDB REPLICATION'),
        ('pgbouncer', 'LOGIN'),
        ('pgsodium_keyholder', 'NOLOGIN'),
        ('pgsodium_keyiduser', 'NOLOGIN'),
        ('pgsodium_keymaker', 'NOLOGIN')) AS v(name, attrs)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            EXECUTE format('CREATE ROLE %I %s', r.name, r.attrs);
        END IF;
    END LOOP;
END $$;
GRANT anon, authenticated, service_role TO authenticator;

CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS storage AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS realtime AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS _realtime AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS extensions AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS graphql AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS graphql_public AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS vault AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS pgsodium AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS supabase_functions AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS supabase_migrations AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS net AUTHORIZATION supabase_admin;
CREATE SCHEMA IF NOT EXISTS pgbouncer AUTHORIZATION pgbouncer;

CREATE TABLE IF NOT EXISTS auth.users (
    id uuid PRIMARY KEY, email text, encrypted_password text, created_at timestamptz);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
CREATE TABLE IF NOT EXISTS storage.buckets (id text PRIMARY KEY, name text NOT NULL);
ALTER TABLE storage.buckets OWNER TO supabase_storage_admin;
CREATE TABLE IF NOT EXISTS storage.objects (
    id uuid PRIMARY KEY, bucket_id text REFERENCES storage.buckets (id), name text);
ALTER TABLE storage.objects OWNER TO supabase_storage_admin;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
CREATE TABLE IF NOT EXISTS realtime.messages (id bigserial PRIMARY KEY, topic text);
CREATE TABLE IF NOT EXISTS vault.secrets (id uuid PRIMARY KEY, secret text);
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text PRIMARY KEY);
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
    RETURNS TABLE (username name, password text) LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS
    $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = p_usename $$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;

INSERT INTO auth.users VALUES ('00000000-0000-0000-0000-000000000001', 'a@example.org',
    'x', now()) ON CONFLICT DO NOTHING;
INSERT INTO storage.buckets VALUES ('avatars', 'avatars') ON CONFLICT DO NOTHING;

-- What Supabase grants its users' admin on the platform's schemas: usage and reads,
-- not ownership.
GRANT USAGE ON SCHEMA auth, storage, realtime, extensions, graphql_public TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA auth, storage TO dashboard_user;
