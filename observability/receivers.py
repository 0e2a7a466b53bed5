"""Signal handlers of the observability app (connected in ObservabilityConfig.ready)."""
