"""Sessions and their turns: the seed's ``ClaudeCodeSessionManager`` and ``ClaudeHandler``, the turn
runner, billing, maintenance and lent clients. Imports ``cluster``, ``workers`` and below; the
library's callers start here.
"""
