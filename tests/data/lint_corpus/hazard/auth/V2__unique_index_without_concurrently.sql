-- hazard: CREATE UNIQUE INDEX without CONCURRENTLY on an existing table
-- expect: squawk/require-concurrent-index-creation line 3
CREATE UNIQUE INDEX user_email_lower ON authentication_user (lower(email));
