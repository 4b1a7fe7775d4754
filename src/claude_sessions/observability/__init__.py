"""How the service is seen from outside: structured logs, per-session metrics (the seed's
``SessionMetrics``), Prometheus telemetry and the console's usage series. Imports only
``errors`` and ``config``.
"""
