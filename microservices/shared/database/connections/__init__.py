"""What a pooled connection carries: the request context (RLS user), the session reset that
makes a checked-out connection clean, and one-off direct connections.

The pools: :mod:`.manager` (service -> pool, replicas, moved locations), :mod:`.pool`,
:mod:`.checkout`, :mod:`.pool_config`; :mod:`.hooks` is the seam monitoring plugs into.
The seed imports them from :mod:`microservices.shared.database.connection_manager`.
"""
