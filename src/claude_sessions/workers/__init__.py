"""CLI processes: one worker (a connected ``ClaudeSDKClient``), the pool that keeps spares warm and
reuses workers, the options and OS sandbox each CLI starts with, and the bookkeeping that ends
stray processes. Imports ``store``, ``gateway`` and below.
"""
