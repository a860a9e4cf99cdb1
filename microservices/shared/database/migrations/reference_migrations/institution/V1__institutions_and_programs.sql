-- Institutions and their programs.
CREATE TABLE institutions_institution (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code text NOT NULL UNIQUE,
    name text NOT NULL,
    kind text NOT NULL DEFAULT 'university'
        CHECK (kind IN ('university', 'college', 'polytechnic', 'school', 'other')),
    country char(2),
    website text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX institutions_institution_name_idx ON institutions_institution (lower(name));

CREATE TABLE institutions_program (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    institution_id uuid NOT NULL REFERENCES institutions_institution (id) ON DELETE CASCADE,
    code text NOT NULL,
    name text NOT NULL,
    level text NOT NULL DEFAULT 'bachelor'
        CHECK (level IN ('certificate', 'diploma', 'bachelor', 'master', 'doctorate')),
    duration_years numeric(3, 1),
    UNIQUE (institution_id, code)
);
