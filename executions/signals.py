"""Signals the executions app sends; other apps (observability, concurrency) listen.

`executions` never imports those apps: what it records about output and statistics
reaches them through these signals, sent synchronously inside the writing transaction
so a receiver's F() increments commit or roll back with the change they count.
"""

from django.dispatch import Signal

# A batch of status changes just written. kwargs: changes=[StatusChange, ...]
task_status_changed = Signal()

# Output captured from running tasks. kwargs: execution_id, records=[Captured, ...]
# kind is "stdout", "stderr", "system" (a transcript line) or "event" (one raw line of
# $TIDEWATCH_EVENTS, parsed and validated by the receiver).
output_captured = Signal()

# An agent started or finished. kwargs: agent, created (bool)
agent_changed = Signal()

# A wave started or completed. kwargs: wave
wave_changed = Signal()
