-- Authentication: users, their sessions, and permissions.
CREATE TABLE authentication_user (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL,
    password_hash text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    is_staff boolean NOT NULL DEFAULT false,
    last_login timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Case-insensitive uniqueness without the citext extension.
CREATE UNIQUE INDEX authentication_user_email_key ON authentication_user (lower(email));

CREATE TABLE authentication_session (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES authentication_user (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX authentication_session_user_id_idx ON authentication_session (user_id);
CREATE INDEX authentication_session_expires_at_idx ON authentication_session (expires_at);

CREATE TABLE authentication_permission (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    codename text NOT NULL UNIQUE,
    name text NOT NULL
);

CREATE TABLE authentication_userpermission (
    user_id uuid NOT NULL REFERENCES authentication_user (id) ON DELETE CASCADE,
    permission_id bigint NOT NULL REFERENCES authentication_permission (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, permission_id)
);
CREATE INDEX authentication_userpermission_permission_idx
    ON authentication_userpermission (permission_id);
