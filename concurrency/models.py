"""The concurrency timeline reads the task status audit (executions); it owns no tables.

Its migrations add one index to the audit table: the rows leaving a status the timeline
counts, by time (concurrency/migrations/0002_audit_index_partial.py), which the timeline's
statement scans.
"""
