from executions.runners.base import Finished, LaunchSpec, Output, Runner, Started
from executions.runners.workdir import AttemptResult

__all__ = ["AttemptResult", "Finished", "LaunchSpec", "Output", "Runner", "Started", "attempt_result", "get_runner"]

BACKENDS = ("local", "celery")


def get_runner(backend: str) -> Runner:
    if backend == "local":
        from executions.runners.local import LocalRunner

        return LocalRunner()
    if backend == "celery":
        from executions.runners.celery import CeleryRunner

        return CeleryRunner()
    raise ValueError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")


def attempt_result(backend: str, run_id: int, key: str, attempt: int) -> AttemptResult | None:
    """How an attempt of an earlier run ended, from what it left behind (None: it did not
    finish, or left nothing to read). Local attempts leave it in the work directory, under
    the database's run id; attempts on Celery workers, in the database."""
    from executions.runners import workdir

    if backend == "celery":
        from executions.runners.celery import attempt_result as remote_result

        return remote_result(run_id, key, attempt)

    return workdir.result(run_id, key, attempt)
