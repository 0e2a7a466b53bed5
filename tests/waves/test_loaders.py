"""Loader errors: each names the file, the line, the step and the problem; nothing is written."""

import re
import textwrap

import pytest
from django.core.management import CommandError, call_command

from waves.loaders import DefinitionError, load_path
from waves.models import Task, TaskList

pytestmark = pytest.mark.django_db

GOOD_STEP = "  - id: ok\n    run: 'true'\n"

# (file name, content, line, step, problem fragment)
BAD = [
    ("dep.yaml", "steps:\n" + GOOD_STEP + "  - id: y\n    depends_on: x\n", 4, "y", "unknown dependency 'x'"),
    ("dup.yaml", "steps:\n" + GOOD_STEP + "  - id: ok\n", 4, "ok", "duplicate id 'ok'"),
    (
        "cycle.yaml",
        "steps:\n  - id: a\n    depends_on: b\n  - id: b\n    depends_on: a\n",
        2,
        "a",
        "cycle: a -> b -> a",
    ),
    ("key.yaml", "steps:\n" + GOOD_STEP + "  - id: y\n    comand: ls\n", 4, "y", "unknown key 'comand'"),
    ("type.yaml", "steps:\n  - id: y\n    retries: many\n", 2, "y", "'retries' must be an integer"),
    ("bad.yaml", "steps:\n  - id: y\n    run: a: b\n", 3, None, "malformed YAML"),
    ("bad.json", '{"steps": [\n  {"id": "y",}\n]}', 2, None, "malformed JSON"),
    ("key.json", '{"steps": [\n  {"id": "a"},\n  {"id": "y", "when": 3}\n]}', 3, "y", "'when' must be str"),
    (
        "table.pipeline",
        "1 | base | - | auto | - | 10 | Setup\n\n2 | base | broken\n",
        3,
        None,
        "malformed line",
    ),
    ("mode.pipeline", "# modes\n1 | base | - | fast | - | 10 | Setup\n", 2, "step-1", "mode must be one of"),
    (
        "ref.yaml",
        "steps:\n  - id: y\n    run: echo ${steps.nope.outputs.x}\n",
        2,
        "y",
        "reference to an unknown step 'nope'",
    ),
    ("cel.yaml", "steps:\n" + GOOD_STEP + "  - id: y\n    when: 'steps.ok.outputs >'\n", 4, "y", "bad CEL"),
    (
        "upstream.yaml",
        "steps:\n" + GOOD_STEP + "  - id: y\n    when: steps.ok.outputs.n > 1\n",
        4,
        "y",
        "names step 'ok', which is not upstream of 'y'",
    ),
    ("until.yaml", "steps:\n  - id: y\n    repeat: {max_iterations: 3}\n", 2, "y", "'repeat' needs 'until'"),
    (
        "iters.yaml",
        "steps:\n  - id: y\n    repeat: {until: 'true', max_iterations: 1001}\n",
        2,
        "y",
        "'repeat.max_iterations' must be 1..1000",
    ),
    ("each.yaml", "steps:\n  - id: y\n    for_each: {a: 1}\n", 2, "y", "'for_each' must be a list"),
    (
        "big.yaml",
        "steps:\n  - id: y\n    for_each: [" + "1, " * 10_001 + "]\n",
        2,
        "y",
        "more than the limit",
    ),
    ("id.yaml", "steps:\n" + GOOD_STEP + "  - id: 'a b'\n", 4, None, "bad id 'a b'"),
    (
        "twice.yaml",
        "steps:\n" + GOOD_STEP + "    run: 'false'\n",
        4,
        None,
        "duplicate key 'run' (first on line 3)",
    ),
    ("twice.json", '{"steps": [\n  {"id": "a", "run": "x", "run": "y"}\n]}', 2, "a", "duplicate key 'run'"),
    (
        "deep.yaml",
        "steps:\n  - id: y\n    inputs: {a: " + "[" * 70 + "]" * 70 + "}\n",
        3,
        None,
        "nested deeper than 64",
    ),
]


@pytest.mark.parametrize(("name", "content", "line", "step", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_line_step_and_problem_and_writes_nothing(
    tmp_path, name, content, line, step, problem
):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DefinitionError) as info:
        load_path(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    if step:
        assert f"step '{step}'" in message
    assert problem in message
    with pytest.raises(CommandError, match=re.escape(problem)):
        call_command("import_tasklist", str(path))
    assert not TaskList.objects.exists() and not Task.objects.exists()


def test_references_imply_dependencies(tmp_path):
    path = tmp_path / "refs.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: r
        steps:
          - id: a
            run: 'true'
          - id: b
            inputs: {x: "${steps.a.outputs.count}"}
            env: {Y: "${steps.a.outputs}"}
          - id: c
            for_each: ${steps.b.outputs.list}
            run: echo ${item}
        """)
    )
    steps = {s.key: s for s in load_path(path).steps}
    assert steps["b"].depends_on == ["a"]
    assert steps["c"].depends_on == ["b"]
    assert steps["c"].for_each == "${steps.b.outputs.list}"


def test_repeat_until_may_name_the_step_itself_and_approval_makes_a_gate(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "steps:\n  - id: w\n    approval: true\n    repeat: {until: steps.w.outputs.ready == true}\n"
    )
    (step,) = load_path(path).steps
    assert step.repeat == {"until": "steps.w.outputs.ready == true", "max_iterations": 10, "delay": 0}
    assert step.kind == "gate" and step.approval


def test_parallel_blocks_nest_and_children_inherit_block_dependencies(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent("""\
        steps:
          - id: first
          - id: outer
            type: parallel
            depends_on: first
            join_policy: any
            max_parallelism: 2
            steps:
              - id: a
                branch: left
              - id: inner
                type: parallel
                steps:
                  - id: b
          - id: after
            depends_on: outer
        """)
    )
    steps = {s.key: s for s in load_path(path).steps}
    assert steps["outer"].kind == "group" and steps["outer"].join_policy == "any"
    assert (steps["a"].parent, steps["a"].parallel_group, steps["a"].branch_name) == (
        "outer",
        "outer",
        "left",
    )
    assert (steps["b"].parent, steps["b"].branch_name, steps["b"].depends_on) == ("inner", "b", ["first"])
    assert steps["inner"].depends_on == ["first"]


def test_json_workflow_loads_like_yaml(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"name": "j", "max_parallelism": 2, "steps": [{"id": "a", "run": "true"}, '
                    '{"id": "b", "depends_on": ["a"], "timeout": 5}]}')  # fmt: skip
    d = load_path(path)
    assert (d.name, d.max_parallelism, d.steps[1].depends_on, d.steps[1].timeout_s) == ("j", 2, ["a"], 5)


def test_pipeline_command_template_fills_shell_quoted_fields(tmp_path):
    path = tmp_path / "p.pipeline"
    path.write_text("1 | base | - | gate | - | 2.5 | Set up; rm -rf /\n")
    (step,) = load_path(path, command_template="deploy {profile} --title {title} --n {n}").steps
    assert step.command == "deploy base --title 'Set up; rm -rf /' --n 1"
    assert (step.kind, step.approval, step.estimated_minutes, step.display_id) == ("gate", True, 2.5, "1")
