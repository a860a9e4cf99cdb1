-- Built without blocking writes to a busy table: CREATE INDEX CONCURRENTLY cannot run
-- inside a transaction, so edulink-db runs this file statement by statement (it detects
-- CONCURRENTLY). IF NOT EXISTS keeps it safe to run again after an interruption.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_notification_pending_idx
    ON notifications_notification (created_at)
    WHERE status = 'pending';
