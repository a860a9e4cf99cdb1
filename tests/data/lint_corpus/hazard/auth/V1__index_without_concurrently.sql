-- hazard: CREATE INDEX without CONCURRENTLY on an existing table blocks its writes while it builds
-- expect: squawk/require-concurrent-index-creation line 3
CREATE INDEX authentication_user_last_login ON authentication_user (last_login);
