-- User management: profiles, preferences and academic information.
CREATE TABLE profiles_userprofile (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL,              -- the auth service's authentication_user.id
    first_name text NOT NULL DEFAULT '',
    last_name text NOT NULL DEFAULT '',
    phone text,
    bio text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The seed's index (unique: one profile per user).
CREATE UNIQUE INDEX idx_user_profile_user_id ON profiles_userprofile (user_id);

CREATE TABLE profiles_userpreference (
    user_profile_id uuid NOT NULL REFERENCES profiles_userprofile (id) ON DELETE CASCADE,
    key text NOT NULL,
    value jsonb NOT NULL DEFAULT 'null'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_profile_id, key)
);

CREATE TABLE profiles_academicinfo (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_profile_id uuid NOT NULL REFERENCES profiles_userprofile (id) ON DELETE CASCADE,
    institution_id uuid,                -- the institution service's institutions_institution.id
    program_id uuid,                    -- the institution service's institutions_program.id
    student_number text,
    enrollment_year integer CHECK (enrollment_year BETWEEN 1900 AND 2200),
    expected_graduation_year integer CHECK (expected_graduation_year BETWEEN 1900 AND 2200),
    gpa numeric(4, 2) CHECK (gpa >= 0)
);
CREATE INDEX profiles_academicinfo_user_profile_idx ON profiles_academicinfo (user_profile_id);
CREATE INDEX profiles_academicinfo_institution_idx ON profiles_academicinfo (institution_id);

-- The seed's RLS policy on profiles: a request sees and writes only its own user's profile.
-- current_user_id() is NULL without a request user, so the policy then matches nothing.
-- Compared as text so that a malformed user id matches nothing instead of raising.
ALTER TABLE profiles_userprofile ENABLE ROW LEVEL SECURITY;
ALTER TABLE profiles_userprofile FORCE ROW LEVEL SECURITY;
CREATE POLICY user_profile_policy ON profiles_userprofile
    FOR ALL
    USING (user_id::text = current_user_id())
    WITH CHECK (user_id::text = current_user_id());
