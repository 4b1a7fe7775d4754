"""The model gateway: every CLI's calls to the model pass through it, authorised by a per-worker
grant, metered, priced and held to budgets and ``MODELS_ALLOWED``. Imports ``config`` and
``observability``.
"""
