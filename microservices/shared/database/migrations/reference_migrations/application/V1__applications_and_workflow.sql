-- Student applications and their workflow history.
CREATE TABLE applications_application (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_profile_id uuid NOT NULL,      -- the user service's profiles_userprofile.id
    internship_id uuid NOT NULL,        -- the internship service's internships_internship.id
    status text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'submitted', 'under_review', 'shortlisted',
                          'accepted', 'rejected', 'withdrawn')),
    cover_letter text NOT NULL DEFAULT '',
    submitted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_profile_id, internship_id)
);
-- The seed's index (the unique constraint above leads with user_profile_id too, but the
-- seed names this one and other queries filter on user_profile_id alone).
CREATE INDEX idx_application_user_profile ON applications_application (user_profile_id);
CREATE INDEX applications_application_internship_idx ON applications_application (internship_id);

CREATE TABLE applications_workflowstate (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id uuid NOT NULL REFERENCES applications_application (id) ON DELETE CASCADE,
    from_status text,
    to_status text NOT NULL,
    changed_by uuid,
    note text NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applications_workflowstate_application_idx
    ON applications_workflowstate (application_id, changed_at);
