"""What outlives a process: the registry (sessions, leases, nodes, budgets; SQLite for one node,
PostgreSQL for a cluster), transcripts in PostgreSQL, the archive over them and the CLI's files,
and imported conversations. Imports ``errors``, ``config`` and ``observability``.
"""
