"""This node among the others: its heartbeat (which keeps its leases), and draining. Imports
``store`` and below; what a beat does to sessions is handed in by ``sessions``.
"""
