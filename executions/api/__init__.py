"""REST endpoints of runs: start, list, detail, their tasks, waves, timeline, active agents,
audit and event log, sessions, and resume / cancel / approve / reject (config/api.py has the
rules every endpoint follows).

Every run, wave and task is reached through `selectors.visible_runs(user)` (the runs of the
task lists of the user's teams), so another team's rows are 404. Each view validates, calls
one selector or service, and serializes; each list answers in a fixed number of queries.
"""

from executions.api.records import (  # noqa: F401
    AgentsView,
    RunAgentsView,
    RunAuditView,
    RunEventsView,
    SessionListView,
    SessionSummaryView,
)
from executions.api.runs import RunDetailView, RunListView, RunTasksView, RunTimelineView, RunWavesView  # noqa: F401
from executions.api.steering import (  # noqa: F401
    RunCancelView,
    RunResumeView,
    RunStartView,
    StepApproveView,
    StepRejectView,
)
