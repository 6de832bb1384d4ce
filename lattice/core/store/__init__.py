"""Stores for workflows and run logs: records, the SQLite store and its writer."""
