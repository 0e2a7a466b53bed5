"""Signal handlers of the observability app (connected in ObservabilityConfig.ready).

`executions` sends its signals synchronously inside the transaction that writes the
change, so what these handlers write commits or rolls back with it. Each handler is
thin: one call into `observability.services`, which does one bulk INSERT per model
and one F() UPDATE per wave (STYLE.md point 4), then `statistics_announce`, which writes the
run's coalesced `stats.update` event once that transaction commits. Nothing here broadcasts: live
updates come from the event log (observability.relay tails it).
"""

from django.dispatch import receiver

from executions.signals import output_captured, task_status_changed, wave_changed
from observability import services


@receiver(output_captured, dispatch_uid="observability.records_write")
def on_output_captured(sender, execution_id, records, **kwargs):
    if records:
        services.records_write(execution_id, records)
        services.statistics_announce({r.execution_id or execution_id for r in records if r.wave_id})


@receiver(task_status_changed, dispatch_uid="observability.statistics_count_status_changes")
def on_task_status_changed(sender, changes, **kwargs):
    services.statistics_announce(services.statistics_count_status_changes(changes))


@receiver(wave_changed, dispatch_uid="observability.statistics_wave_timing")
def on_wave_changed(sender, wave, **kwargs):
    services.statistics_wave_timing(wave)
    services.statistics_announce([wave.execution_id], force=True)
