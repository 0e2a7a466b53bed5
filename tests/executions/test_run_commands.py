"""run_tasklist and execute_run at the command line: bad arguments are a clear error with
exit code 2, never a traceback; the same for anything not found."""

import pytest

from tests.factories import task_list

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["etl", "--simulate", "inf"], "--simulate: must be seconds per estimated minute"),
        (["etl", "--simulate", "nan"], "--simulate: must be seconds per estimated minute"),
        (["etl", "--simulate", "-1"], "--simulate: must be seconds per estimated minute"),
        (["etl", "--max-parallelism", "2147483648"], "--max-parallelism: must be a whole number from 1 to"),
        (["etl", "--max-parallelism", "0"], "--max-parallelism: must be a whole number from 1 to"),
        (["etl", "--max-parallelism", "1e3"], "--max-parallelism: must be a whole number from 1 to"),
        (["--resume", "99999999999999999999"], "run 99999999999999999999 does not exist"),
        (["--resume", "12"], "run 12 does not exist"),
        (["--resume", "x"], "--resume: must be a run id"),
        (["no-such-list"], "no task list with id or name 'no-such-list'"),
        ([], "name a task list (id or name), or --resume RUN_ID"),
    ],
)
def test_bad_arguments_and_unknown_names_exit_2_with_a_clear_error(manage, args, message):
    task_list("etl")
    result = manage("run_tasklist", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("run_id, message", [("77", "run 77 does not exist"), ("x", "must be a run id")])
def test_execute_run_of_nothing_exits_2(manage, run_id, message):
    result = manage("execute_run", run_id)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
