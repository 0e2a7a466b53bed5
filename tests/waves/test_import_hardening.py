"""Bad workflow files (issue 15, item 4): every class of problem gets one clear DefinitionError
naming the file, the line and the step, the same on SQLite and PostgreSQL, before anything is
written; nothing crashes, overflows or hangs. The bounds are checked at their edge too: a value
just inside imports and reads back unchanged on both databases."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from waves import loaders
from waves.loaders import Definition, DefinitionError, StepDef, load_bytes, load_path, load_text, validate
from waves.models import Task, TaskDependency, TaskList, TaskTemplate
from waves.services import task_list_import

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def within(seconds: int):
    """Fail instead of hanging (the suite has no timeout plugin)."""

    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def nothing_written():
    return not (TaskList.objects.exists() or Task.objects.exists() or TaskTemplate.objects.exists())


def refused(tmp_path, name: str, content: str | bytes, *fragments: str) -> str:
    """`content` as file `name`: load_path raises a DefinitionError naming every fragment,
    import_tasklist fails with the same message, and no row is written."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with within(30), pytest.raises(DefinitionError) as info:
        load_path(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    with within(30), pytest.raises(CommandError) as command:
        call_command("import_tasklist", str(path))
    assert str(command.value) == message
    assert nothing_written()
    return message


def imported(tmp_path, name: str, content: str) -> TaskList:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return task_list_import(definition=load_path(path), source_path=str(path))


def one_step(**fields) -> str:
    """A one-step workflow as JSON (exact values: no YAML typing in the way)."""
    return json.dumps({"steps": [{"id": "a", **fields}]})


# --------------------------------------------------------------------------- duplicate keys

DUPLICATES = [
    ("run.yaml", "steps:\n  - id: a\n    run: echo one\n    run: echo two\n", ":4: ", "'run' (first on line 3)"),
    ("top.yaml", "name: x\nsteps:\n  - id: a\nname: y\n", ":4: ", "'name' (first on line 1)"),
    ("inputs.yaml", "steps:\n  - id: a\n    inputs: {x: 1, y: 2, x: 3}\n", ":3: ", "'x' (first on line 3)"),
    ("merge.yaml", "steps:\n  - id: a\n    env: &e {A: '1'}\n  - id: b\n    env: {<<: *e, <<: *e}\n", ":5: ", "'<<'"),
    ("repeat.yaml", "steps:\n  - id: a\n    repeat:\n      until: 'true'\n      until: 'false'\n", ":5: ", "'until'"),
    ("run.json", '{"steps": [\n  {"id": "a",\n   "run": "one", "run": "two"}\n]}', ":2: step 'a': steps[0]", "'run'"),
    ("deep.json", '{"steps": [\n {"id": "a", "inputs": {"x": {"k": 1, "k": 2}}}\n]}', "step 'a': steps[0].inputs.x", "'k'"),
    ("top.json", '{"name": "x", "steps": [{"id": "a"}], "name": "y"}', "the file", "'name'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "where", "key"), DUPLICATES, ids=[d[0] for d in DUPLICATES])
def test_a_key_written_twice_is_refused_never_last_one_wins(tmp_path, name, content, where, key):
    refused(tmp_path, name, content, where, f"duplicate key {key}")


def test_a_yaml_merge_key_may_still_be_overridden(tmp_path):
    tl = imported(
        tmp_path,
        "merge.yaml",
        "steps:\n  - id: a\n    env: &common {A: '1', B: '2'}\n  - id: b\n    env: {<<: *common, B: '3'}\n",
    )
    assert tl.tasks.get(key="b").env == {"A": "1", "B": "3"}


# --------------------------------------------------------------------------- not UTF-8


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("latin1.yaml", b"steps:\n  - id: a\n    run: echo caf\xe9\n", ":3: the file is not UTF-8: byte 0xe9 at offset 34"),
        ("utf16.json", '{"steps": [{"id": "a"}]}'.encode("utf-16"), ":1: the file is not UTF-8: byte 0xff at offset 0"),
        ("table.pipeline", b"1 | base | - | auto | - | 10 | Set up\n2 | base | - | auto | - | 5 | \x80\n", ":2: "),
    ],
)  # fmt: skip
def test_a_file_that_is_not_utf8_names_the_byte_and_its_offset(tmp_path, name, content, where):
    refused(tmp_path, name, content, where)


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + one_step(run="true").encode())
    assert load_path(path).steps[0].command == "true"


def test_text_with_a_lone_surrogate_or_a_nul_is_refused_with_its_line():
    with pytest.raises(DefinitionError, match=r"^w.yaml:2: the text is not valid Unicode"):
        load_text("steps:\n  - id: a\ud800\n", source="w.yaml")
    with pytest.raises(DefinitionError, match=r"^w.yaml:3: the text contains a NUL"):
        load_text("steps:\n  - id: a\n    run: echo \x00\n", source="w.yaml")


# --------------------------------------------------------------------------- nesting


def nested_inputs(depth: int) -> str:
    """A workflow whose mappings and lists nest `depth` deep in all (the top mapping is 1)."""
    return "steps:\n  - id: a\n    inputs: {x: " + "[" * (depth - 4) + "]" * (depth - 4) + "}\n"


def test_nesting_is_bounded_at_64_levels_in_yaml_and_json(tmp_path):
    assert load_text(nested_inputs(64), source="w.yaml").steps[0].inputs["x"]
    refused(tmp_path, "deep.yaml", nested_inputs(65), ":3: nested deeper than 64 levels")
    as_json = json.dumps(
        {
            "steps": [
                {"id": "a", "inputs": {"x": yaml.safe_load(nested_inputs(64))["steps"][0]["inputs"]["x"]}}
            ]
        }
    )
    assert load_text(as_json, source="w.json").steps[0].inputs["x"]
    refused(
        tmp_path,
        "deep.json",
        as_json.replace("[]", "[[]]"),
        "step 'a': steps[0].inputs.x",
        "nested deeper than 64",
    )


def test_deep_parallel_blocks_are_refused_in_both_formats(tmp_path):
    def blocks(depth: int) -> dict:
        step: dict = {"id": "leaf", "run": "true"}
        for i in range(depth):
            step = {"id": f"b{i}", "type": "parallel", "steps": [step]}
        return {"steps": [step]}

    assert len(load_text(json.dumps(blocks(30)), source="w.json").steps) == 31
    refused(tmp_path, "blocks.yaml", yaml.safe_dump(blocks(40)), "nested deeper than 64 levels")
    refused(tmp_path, "blocks.json", json.dumps(blocks(40)), "nested deeper than 64 levels")
    huge = (
        '{"steps": ['
        + '{"id": "b", "type": "parallel", "steps": [' * 5_000
        + '{"id": "a"}'
        + "]}" * 5_000
        + "]}"
    )
    refused(tmp_path, "huge.json", huge, "nested deeper than 64 levels")


def test_a_definition_built_in_code_with_deep_blocks_is_refused_without_recursion():
    steps = [StepDef(key="b0", kind="group")]
    steps += [StepDef(key=f"b{i}", kind="group", parent=f"b{i - 1}") for i in range(1, 5_000)]
    steps.append(StepDef(key="leaf", template="t", parent="b4999"))
    assert loaders.graph_of(steps) == (["leaf"], [])
    assert loaders._leaves(steps)("b0") == ["leaf"]
    with pytest.raises(DefinitionError, match="parallel blocks nested deeper than 64 levels"):
        validate(Definition(name="d", steps=steps))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("flow.yaml", nested_inputs(100_000)),
        ("block.yaml", "steps:\n  - id: a\n    inputs:\n      x:\n" + "".join(" " * (8 + i) + "-\n" for i in range(2_000))),
        ("deep.json", '{"steps": [{"id": "a", "inputs": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"),
    ],
)  # fmt: skip
def test_100000_deep_files_give_one_clear_line_not_a_crash(tmp_path, name, content):
    """In a child process, so that a regression (SIGSEGV) cannot take the test run with it."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/unused.sqlite3",
        "TIDEWATCH_VAR_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "import_tasklist", str(path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"CommandError: {path}:"), done.stderr
    assert "nest" in done.stderr  # ours (deeper than 64) or libyaml's own, past 1,000


# --------------------------------------------------------------------------- aliases


def laughs(levels: int, width: int = 10) -> str:
    lines = ["steps:", "  - id: a", "    inputs:", "      l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"      l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once(tmp_path):
    refused(tmp_path, "bomb.yaml", laughs(9), "aliases expand the file by more than 100,000 values")
    assert load_text(laughs(3), source="small.yaml").steps[0].inputs["l2"][9][9][9] == "lol"


def test_merge_keys_cannot_multiply_either(tmp_path):
    lines = ["steps:", "  - id: a", "    inputs:", "      m0: &m0 {k: 1}"]
    lines += [f"      m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 12)]
    refused(tmp_path, "merge.yaml", "\n".join(lines) + "\n", "aliases expand the file by more than")


def test_an_alias_of_a_long_text_cannot_be_copied_into_every_step(tmp_path):
    long = "x" * 60_000
    two = f"steps:\n  - id: a\n    run: &r '{long}'\n  - id: b\n    run: *r\n"
    assert load_text(two, source="w.yaml").steps[1].command == long
    many = two + "".join(f"  - id: c{i}\n    run: *r\n" for i in range(50))
    refused(tmp_path, "copies.yaml", many, "aliases expand the file by more than")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("steps:\n  - id: a\n    inputs: &x {self: *x}\n", ":3: alias *x refers to its own anchor"),
        (
            "steps:\n  - id: a\n    inputs: {x: *nowhere}\n",
            ":3: alias *nowhere refers to no anchor before it",
        ),
        (
            "steps:\n  - id: a\n    inputs:\n      l0: &l0 [x]\n"
            + "".join(f"      l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 80)),
            "steps[0].inputs.l",  # a chain of aliases nests as deep as it is long
        ),
    ],
)
def test_cyclic_undefined_and_deeply_chained_aliases_are_refused(tmp_path, content, problem):
    refused(tmp_path, "alias.yaml", content, problem)


def test_a_block_cannot_multiply_dependencies_past_a_million_links(tmp_path):
    """500 steps, a block depending on all of them with 2,500 children: 1.25 million links
    from a 100 KB file (children inherit the block's dependencies)."""
    first = [{"id": f"s{i}"} for i in range(500)]
    block = {"id": "b", "type": "parallel", "depends_on": [f"s{i}" for i in range(500)],
             "steps": [{"id": f"c{i}"} for i in range(2_500)]}  # fmt: skip
    refused(tmp_path, "inherit.json", json.dumps({"steps": [*first, block]}), "more than 1,000,000 links")
    # Depending on a block means depending on each of its steps: 2,000 x 600 links.
    block = {"id": "b", "type": "parallel", "steps": [{"id": f"c{i}"} for i in range(600)]}
    after = [{"id": f"d{i}", "depends_on": "b"} for i in range(2_000)]
    refused(tmp_path, "fan.json", json.dumps({"steps": [block, *after]}), "more than 1,000,000 links")


def test_upstream_checks_are_batched_and_right_past_4096_named_steps():
    n = 5_000
    analysis = loaders.dag.analyze(
        [f"s{i}" for i in range(n)], [(f"s{i}", f"s{i + 1}") for i in range(n - 1)]
    )
    pairs = [(f"s{i}", f"s{i - 1}") for i in range(1, n)] + [("s0", "s1"), (f"s{n - 1}", "s0")]
    assert loaders._upstream_pairs(analysis, pairs) == set(pairs) - {("s0", "s1")}


# --------------------------------------------------------------------------- file size


def test_files_larger_than_the_setting_are_refused_before_they_are_parsed(tmp_path, settings):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "IMPORT_MAX_BYTES": 2048}
    body = "steps:\n  - id: a\n    run: 'true'\n"
    exact = body + "#" * (2048 - len(body) - 1) + "\n"
    assert len(load_text(exact, source="w.yaml").steps) == 1
    refused(tmp_path, "big.yaml", exact + "#", "larger than the import limit of 2,048 bytes")
    with pytest.raises(DefinitionError, match="larger than the import limit"):
        load_bytes(b"#" * 2049, source="upload.yaml")
    with pytest.raises(DefinitionError, match="larger than the import limit"):
        load_text("é" * 1025, source="w.yaml")  # 2,050 bytes in 1,025 characters


# --------------------------------------------------------------------------- field bounds


def cel_of_length(step: str, length: int) -> str:
    head = f"steps['{step}'].outputs.n == '"
    return head + "x" * (length - len(head) - 1) + "'"


LONG_CEL = cel_of_length("a", 4097)
BOUNDS = [
    ("id", one_step().replace('"a"', '"' + "a" * 65 + '"'), "'id': 65 characters, more than the 64"),
    ("name", json.dumps({"name": "n" * 201, "steps": [{"id": "a"}]}), "'name': 201 characters, more than the 200"),
    ("template", one_step(template="t" * 201), "'template': 201 characters, more than the 200"),
    ("title", one_step(title="t" * 501), "'title': 501 characters, more than the 500"),
    ("branch", json.dumps({"steps": [{"id": "p", "type": "parallel", "steps": [{"id": "a", "branch": "b" * 201}]}]}), "'branch': 201"),
    ("timeout-huge", one_step(timeout=10**20), "steps[0].timeout: the integer is out of range"),
    ("timeout-week", one_step(timeout=7 * 24 * 3600 + 1), "'timeout' must be 1..604800"),
    ("timeout-negative", one_step(timeout=-5), "'timeout' must be 1..604800"),
    ("timeout-float", one_step(timeout=1.5), "'timeout' must be an integer, got float"),
    ("timeout-bool", one_step(timeout=True), "'timeout' must be an integer, got bool"),
    ("retries", one_step(retries=101), "'retries' must be 0..100"),
    ("max-parallelism", json.dumps({"max_parallelism": 2**31, "steps": [{"id": "a"}]}), "'max_parallelism' must be 1..2147483647"),
    ("minutes-nan", one_step(estimated_minutes=math.nan), "steps[0].estimated_minutes: nan is not a finite number"),
    ("minutes-inf", one_step(estimated_minutes=math.inf), "inf is not a finite number"),
    ("minutes-negative", one_step(estimated_minutes=-1), "'estimated_minutes' must be a number from 0 to 1e+06"),
    ("minutes-bool", one_step(estimated_minutes=True), "'estimated_minutes' must be a number, got bool"),
    ("delay-inf", one_step(repeat={"until": "true", "delay": 1e999}), "steps[0].repeat.delay: inf is not a finite"),
    ("delay-big", one_step(repeat={"until": "true", "delay": 1e9}), "'repeat.delay' must be a number from 0 to"),
    ("input-int", one_step(inputs={"n": 2**64}), "steps[0].inputs.n: the integer is out of range"),
    ("input-nan", one_step(inputs={"n": [1.0, math.nan]}), "steps[0].inputs.n[1]: nan is not a finite number"),
    ("input-1e16", one_step(for_each=[1e16]), "steps[0].for_each[0]: 1e+16: a fraction this large reads back"),
    ("nul-run", one_step(run="echo \x00"), "steps[0].run: the text contains a NUL character"),
    ("nul-key", one_step(inputs={"a\x00": 1}), "steps[0].inputs: key 'a\\x00': the text contains a NUL"),
    ("nul-env", one_step(env={"A": "\x00"}), "steps[0].env.A: the text contains a NUL"),
    ("surrogate", one_step(title="\ud800"), "steps[0].title: the text contains a lone surrogate"),
    ("env-name", one_step(env={"A=B": "1"}), "'env' names must be non-empty and without '='"),
    ("when-long", one_step(when=LONG_CEL), "'when' is 4,097 characters long, more than the limit of 4,096"),
    ("when-deep", one_step(when="(" * 65 + "true" + ")" * 65), "'when' nests ( [ { deeper than 64 levels"),
    ("when-panic", one_step(when="(" * 100_000 + "true" + ")" * 100_000), "'when' is 200,004 characters long"),
    ("until-deep", one_step(repeat={"until": "[" * 65 + "]" * 65}), "'repeat.until' nests ( [ { deeper"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "content", "problem"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_values_past_a_bound_are_refused_with_their_field(tmp_path, case, content, problem):
    message = refused(tmp_path, f"{case}.json", content, problem)
    if "steps" in json.loads(content) and case not in ("name", "max-parallelism"):
        assert ":1: step '" in message  # one-line JSON: the step's id is on line 1


YAML_VALUES = [
    ("nan", "estimated_minutes: .nan", "steps[0].estimated_minutes: nan is not a finite number"),
    ("overflow", "estimated_minutes: 1.0e+999", "inf is not a finite number"),
    ("nul", 'run: "echo \\0"', "steps[0].run: the text contains a NUL"),
    ("date", "inputs: {day: 2024-01-01}", "steps[0].inputs.day: a date value is not allowed (quote it"),
    ("bad-date", "inputs: {day: 2024-02-30}", "malformed YAML: day is out of range"),
    ("binary", "inputs: {b: !!binary aGk=}", "steps[0].inputs.b: a bytes value is not allowed"),
    ("set", "inputs: {s: !!set {a, b}}", "steps[0].inputs.s: a set value is not allowed"),
    ("bool-key", "on: push", "steps[0]: key True is a bool: keys must be text"),
    ("int-key", "inputs: {1: one}", "steps[0].inputs: key 1 is a int: keys must be text"),
    ("null-key", "inputs: {~: x}", "steps[0].inputs: key None is a NoneType"),
    ("digits", "retries: " + "9" * 5000, "malformed YAML: Exceeds the limit"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "line", "problem"), YAML_VALUES, ids=[v[0] for v in YAML_VALUES])
def test_yaml_values_no_database_or_json_column_can_hold_are_refused(tmp_path, case, line, problem):
    refused(tmp_path, f"{case}.yaml", f"steps:\n  - id: a\n    {line}\n", problem)


@pytest.mark.parametrize(
    ("case", "row", "problem"),
    [
        ("minutes-nan", "1 | base | - | auto | - | nan | T", "minutes must be a number from 0 to"),
        ("minutes-inf", "1 | base | - | auto | - | 1e999 | T", "minutes must be a number from 0 to"),
        ("number-long", "1234567890 | base | - | auto | - | 1 | T", "at most 9 digits"),
        ("number-unicode", "\u00b2 | base | - | auto | - | 1 | T", "step number must be an integer"),
        ("title-long", "1 | base | - | auto | - | 1 | " + "t" * 501, "'title': 501 characters"),
        ("profile-long", "1 | " + "p" * 201 + " | - | auto | - | 1 | T", "'template': 201 characters"),
    ],
)
def test_pipeline_rows_are_bounded_too(tmp_path, case, row, problem):
    refused(tmp_path, f"{case}.pipeline", row + "\n", problem)


def test_values_at_their_bounds_import_and_read_back_unchanged(tmp_path):
    inner = {"id": "a" * 64, "title": "t" * 500, "template": "p" * 200, "branch": "b" * 200, "run": "é ✓",
             "timeout": 7 * 24 * 3600, "retries": 100, "estimated_minutes": 1e6,
             "inputs": {"big": 2**63 - 1, "small": -(2**63) + 1, "pi": 3.25, "deep": [[[{"k": None}]]]},
             "env": {"N": 5}}  # fmt: skip
    last = {"id": "z", "depends_on": "g" * 64, "when": cel_of_length("a" * 64, 4096), "estimated_minutes": 0}
    doc = {"name": "n" * 200, "max_parallelism": 2**31 - 1,
           "steps": [{"id": "g" * 64, "type": "parallel", "steps": [inner]}, last]}  # fmt: skip
    tl = imported(tmp_path, "edge.json", json.dumps(doc))
    tl.refresh_from_db()
    assert (tl.title, tl.max_parallelism) == ("n" * 200, 2**31 - 1)
    a = tl.tasks.get(key="a" * 64)
    assert (a.title, a.template.name, a.branch_name, a.parallel_group) == (
        "t" * 500,
        "p" * 200,
        "b" * 200,
        "g" * 64,
    )
    assert (a.command, a.timeout_s, a.retries, a.estimated_minutes) == ("é ✓", 604800, 100, 1e6)
    assert a.inputs == inner["inputs"] and a.env == {"N": "5"}
    z = tl.tasks.get(key="z")
    assert len(z.condition) == 4096 and z.estimated_minutes == 0.0


def test_a_name_or_source_path_too_long_for_its_column_is_refused_by_the_service():
    definition = load_text(one_step(), source="w.json")
    with pytest.raises(DefinitionError, match="the name must be at most 200 characters"):
        task_list_import(definition=definition, name="n" * 201)
    with pytest.raises(DefinitionError, match="the source path must be at most 1000 characters"):
        task_list_import(definition=definition, source_path="/" + "p" * 1000)
    assert nothing_written()


# --------------------------------------------------------------------------- atomic


def test_validation_runs_before_any_query(django_assert_num_queries):
    bad = Definition(name="d", steps=[StepDef(key="a", template="t", depends_on=["nope"])])
    with django_assert_num_queries(0), pytest.raises(DefinitionError, match="unknown dependency 'nope'"):
        task_list_import(definition=bad)


def test_a_failure_while_writing_leaves_nothing_half_written(monkeypatch):
    old = task_list_import(definition=load_text(one_step(), source="same.json"))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(TaskDependency.objects, "bulk_create", boom)
    text = json.dumps({"steps": [{"id": "a"}, {"id": "b", "template": "fresh", "depends_on": "a"}]})
    with pytest.raises(RuntimeError, match="disk full"):
        task_list_import(definition=load_text(text, source="same.json"), replace=True)
    old.refresh_from_db()
    assert old.archived_at is None and list(TaskList.objects.all()) == [old]
    assert Task.objects.count() == 1 and not TaskTemplate.objects.filter(name="fresh").exists()


# --------------------------------------------------------------------------- properties

SUFFIXES = st.sampled_from([".yaml", ".json", ".pipeline", ""])
SLOW = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(data=st.binary(max_size=400), suffix=SUFFIXES)
def test_any_bytes_load_or_raise_only_definition_error(data, suffix):
    with contextlib.suppress(DefinitionError):
        load_bytes(data, source="fuzz" + suffix, suffix=suffix)
    assert nothing_written()


YAMLISH = st.text(alphabet=st.sampled_from(list("- :{}[],&*!|>'\"#\\\n  a1.~<?%@`\x00\ud800é")), max_size=300)


@SLOW
@given(text=YAMLISH | st.text(max_size=300), suffix=SUFFIXES)
def test_any_text_loads_or_raises_only_definition_error(text, suffix):
    with contextlib.suppress(DefinitionError):
        load_text(text, source="fuzz" + suffix, suffix=suffix)
    assert nothing_written()


@SLOW
@given(when=st.text(alphabet=st.sampled_from(list("()[]{}'\"!-. a1&|?:")), max_size=5000))
def test_no_condition_makes_the_cel_compiler_panic(when):
    with contextlib.suppress(DefinitionError):
        load_text(one_step(when=when), source="w.json")


SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
)  # fmt: skip
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
STEP = st.fixed_dictionaries(
    {"id": st.from_regex(r"[a-z]{1,3}|a{60,70}", fullmatch=True)},
    optional={
        "title": st.text(max_size=3) | st.just("t" * 501), "template": st.text(max_size=3),
        "run": SCALARS, "timeout": SCALARS, "retries": SCALARS, "estimated_minutes": SCALARS,
        "inputs": st.dictionaries(st.text(max_size=4), VALUES, max_size=3), "env": st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
        "for_each": st.lists(VALUES, max_size=3), "when": st.sampled_from(["true", "1 > 0", "(" * 70 + "true" + ")" * 70]),
    },
)  # fmt: skip


@SLOW
@given(steps=st.lists(STEP, min_size=1, max_size=3), as_json=st.booleans())
def test_whatever_loads_imports_on_this_database_and_reads_back_equal(steps, as_json):
    """The loader's checks are the database's: what it accepts, both databases store as is."""
    doc = {"name": "fuzz", "steps": steps}
    try:
        text = json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=False)
    except (ValueError, yaml.YAMLError):
        assume(False)
    try:
        definition = load_text(text, source="fuzz.json" if as_json else "fuzz.yaml")
    except DefinitionError:
        return
    tl = task_list_import(definition=definition, replace=True)
    stored = {t.key: t for t in tl.tasks.all()}
    for s in definition.steps:
        t = stored[s.key]
        assert (t.title, t.command, t.inputs, t.env) == (s.title, s.command, s.inputs, s.env)
        assert (t.timeout_s, t.retries, t.estimated_minutes, t.for_each) == (
            s.timeout_s, s.retries, s.estimated_minutes, s.for_each,
        )  # fmt: skip


def test_a_reference_inside_backquotes_is_refused_at_import():
    from waves.loaders import DefinitionError, load_text

    text = "name: bq\nsteps:\n  - id: a\n    run: echo x\n  - id: b\n    run: echo `echo ${steps.a.outputs.x}`\n"
    with pytest.raises(DefinitionError, match=r"step 'b'.*backquotes.*\$\(\.\.\.\)"):
        load_text(text, suffix=".yaml")
    load_text(text.replace("`echo ${steps.a.outputs.x}`", "$(echo ${steps.a.outputs.x})"), suffix=".yaml")


def test_a_here_document_line_dash_would_not_print_as_written_is_refused_at_import():
    """Debian's /bin/sh drops a byte of a here-document line that starts with part of the
    delimiter followed by a non-ASCII character: such a command is refused, naming the line."""
    import json

    from waves.loaders import DefinitionError, load_text

    def workflow(run: str) -> str:
        return json.dumps({"name": "hd", "steps": [{"id": "a", "run": run}]})

    for body in ("Eé", "EOFé", "ok\nEO€"):
        with pytest.raises(DefinitionError, match=r"step 'a'.*here-document line.*'EOF'.*dash"):
            load_text(workflow(f"cat <<'EOF'\n{body}\nEOF"), suffix=".json")
    for body in ("é", "xEé", "OFé", "Ex", "EOF-ascii"):
        load_text(workflow(f"cat <<'EOF'\n{body}\nEOF"), suffix=".json")
    load_text(workflow("cat <<-EOF\n\tdone\n\tEOF"), suffix=".json")
    with pytest.raises(DefinitionError, match="here-document line"):
        load_text(workflow("cat <<-EOF\n\tEé\n\tEOF"), suffix=".json")


@pytest.mark.parametrize("line", ["Eé", "EOFé", "EOé€", "\tEé"])
def test_dash_really_mangles_those_lines(tmp_path, line):
    """The rule above is dash's behaviour, not a guess: /bin/sh prints such a line otherwise."""
    import os
    import subprocess

    if not os.path.realpath("/bin/sh").endswith("dash"):
        pytest.skip("/bin/sh is not dash here")

    from waves import shell

    command = f"cat <<-EOF\n{line}\nEOF"
    printed = subprocess.run(["/bin/sh", "-c", command], capture_output=True, cwd=tmp_path).stdout
    assert shell.mangled_heredoc_line(command) and printed != (line.lstrip("\t") + "\n").encode()
