"""The concurrency timeline reads the task status audit (executions); it owns no tables.

Its one migration adds an index to the audit table (rows leaving a status, by time), which
the timeline's query scans; see concurrency/migrations/0001_audit_index_on_previous_status.py.
"""
