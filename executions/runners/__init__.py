from executions.runners.base import Finished, LaunchSpec, Output, Runner, Started
from executions.runners.workdir import AttemptResult

__all__ = ["AttemptResult", "Finished", "LaunchSpec", "Output", "Runner", "Started", "attempt_result", "get_runner"]

BACKENDS = ("local",)


def get_runner(backend: str) -> Runner:
    if backend == "local":
        from executions.runners.local import LocalRunner

        return LocalRunner()
    raise ValueError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")


def attempt_result(backend: str, run_id: int, key: str, attempt: int) -> AttemptResult | None:
    """How an attempt of an earlier run ended, from what it left behind (None: it did not
    finish, or left nothing to read). Attempts of every backend leave it in the work
    directory, under the database's run id."""
    from executions.runners import workdir

    return workdir.result(run_id, key, attempt)
