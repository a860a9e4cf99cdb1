"""What a pooled connection carries: the request context (RLS user), the session reset that
makes a checked-out connection clean, and one-off direct connections.

The pool itself is :mod:`microservices.shared.database.connection_manager` (the seed's
path), which builds on these modules.
"""
