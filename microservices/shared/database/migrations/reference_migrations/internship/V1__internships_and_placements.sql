-- Internship opportunities and placements.
CREATE TABLE internships_internship (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    institution_id uuid,                -- the institution service's institutions_institution.id
    title text NOT NULL,
    description text NOT NULL DEFAULT '',
    location text,
    is_remote boolean NOT NULL DEFAULT false,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('draft', 'open', 'closed', 'filled')),
    positions integer NOT NULL DEFAULT 1 CHECK (positions > 0),
    application_deadline date,
    starts_on date,
    ends_on date,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_on IS NULL OR starts_on IS NULL OR ends_on >= starts_on)
);
CREATE INDEX internships_internship_open_idx ON internships_internship (application_deadline)
    WHERE status = 'open';
CREATE INDEX internships_internship_institution_idx ON internships_internship (institution_id);

CREATE TABLE internships_placement (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    internship_id uuid NOT NULL REFERENCES internships_internship (id) ON DELETE RESTRICT,
    user_profile_id uuid NOT NULL,      -- the user service's profiles_userprofile.id
    application_id uuid,                -- the application service's applications_application.id
    status text NOT NULL DEFAULT 'confirmed'
        CHECK (status IN ('confirmed', 'in_progress', 'completed', 'cancelled')),
    starts_on date NOT NULL,
    ends_on date,
    supervisor_name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (internship_id, user_profile_id)
);
CREATE INDEX internships_placement_user_profile_idx ON internships_placement (user_profile_id);
