"""The concurrency timeline reads the task status audit (executions); it owns no tables."""
