-- Notifications, per-user channel preferences, and templates.
CREATE TABLE notifications_template (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code text NOT NULL UNIQUE,
    channel text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    subject text NOT NULL DEFAULT '',
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications_notification (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL,              -- the auth service's authentication_user.id
    template_id uuid REFERENCES notifications_template (id) ON DELETE SET NULL,
    channel text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    subject text NOT NULL DEFAULT '',
    body text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'read')),
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    read_at timestamptz
);
-- The seed's index.
CREATE INDEX idx_notification_user ON notifications_notification (user_id);

CREATE TABLE notifications_preference (
    user_id uuid NOT NULL,
    channel text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    enabled boolean NOT NULL DEFAULT true,
    PRIMARY KEY (user_id, channel)
);
