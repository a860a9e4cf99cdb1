"""PostgreSQL binaries: the embedded development server and the client tools (pg_dump ...)."""
