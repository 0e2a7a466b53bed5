from executions.runners.base import Finished, LaunchSpec, Output, Runner, Started

__all__ = ["Finished", "LaunchSpec", "Output", "Runner", "Started", "get_runner"]


def get_runner(backend: str) -> Runner:
    if backend == "local":
        from executions.runners.local import LocalRunner

        return LocalRunner()
    raise ValueError(f"unknown backend {backend!r} (available: local)")
