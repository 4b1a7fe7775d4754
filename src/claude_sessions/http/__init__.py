"""The HTTP service: the FastAPI app, one router per surface (sessions, OpenAI, operations and admin,
console), authentication, redaction, forwarding between nodes and the server process. Imports
``sessions`` and below; nothing imports it but ``cli``.
"""
