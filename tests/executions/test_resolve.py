"""executions.resolve: one-pass substitution, bounds on what it builds, CEL that cannot crash."""

import atexit
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions import resolve
from executions.resolve import (
    COMMAND_MAX_BYTES,
    ENV_VALUE_MAX_BYTES,
    INPUTS_MAX_BYTES,
    ResolveError,
    evaluate,
    render_command,
    resolve_env,
    resolve_value,
)

# Any text a task could hand back, without NUL (which cannot be an argument at all) or lone
# surrogates (not encodable); mixed with what a shell or the resolver might act on.
SHELLISH = ["${steps.gen.outputs.a}", "${item.x}", "${iteration}", "$(touch pwned)", "`id`",
            "'", '"', "\\", "\n", ";", "|", "&", "$HOME", "*", "~", "#", " ", "\t", "${", "}"]
TEXT = st.lists(
    st.one_of(st.sampled_from(SHELLISH), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))),
    max_size=8,
).map("".join)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)


def ctx_with(outputs=None, item=None) -> dict:
    ctx = {"steps": {"gen": {"outputs": outputs, "status": "succeeded"}}}
    if item is not None:
        ctx["item"] = item
    return ctx


# Where the shell runs: a value that escaped its quotes would leave files here.
SANDBOX = tempfile.mkdtemp(prefix="tidewatch-resolve-")
atexit.register(shutil.rmtree, SANDBOX, ignore_errors=True)


def shell_args(command: str) -> list[str]:
    """What `/bin/sh -c command` passes to printf '%s\\0', as the executor would run it."""
    run = subprocess.run(["/bin/sh", "-c", command], cwd=SANDBOX, capture_output=True, check=True, timeout=10)
    left = os.listdir(SANDBOX)
    if left:  # empty it again, so that hypothesis can shrink to the value that did it
        shutil.rmtree(SANDBOX)
        os.mkdir(SANDBOX)
    assert left == [], "a value was run as shell code"
    return run.stdout.decode("utf-8").split("\0")[:-1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.dictionaries(NAMES, TEXT, min_size=1, max_size=5))
def test_the_shell_receives_exactly_each_output_as_one_argument(values):
    names = list(values)
    command = "printf '%s\\0' " + " ".join(f"${{steps.gen.outputs.{n}}}" for n in names)
    assert shell_args(render_command(command, ctx_with(values))) == [values[n] for n in names]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=st.dictionaries(NAMES, TEXT, min_size=1, max_size=5))
def test_the_shell_receives_exactly_each_item_field_as_one_argument(item):
    names = list(item)
    command = "printf '%s\\0' " + " ".join(f"${{item.{n}}}" for n in names) + " ${iteration}"
    ctx = {**ctx_with(), "item": item, "iteration": 3}
    assert shell_args(render_command(command, ctx)) == [item[n] for n in names] + ["3"]


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(NAMES, TEXT, min_size=1, max_size=5), glue=TEXT.filter(lambda t: "${" not in t))
def test_inputs_and_env_text_is_each_value_once_never_rescanned(values, glue):
    names = list(values)
    template = glue.join(f"${{steps.gen.outputs.{n}}}" for n in names)
    expected = glue.join(values[n] for n in names)
    if resolve.REF_RE.fullmatch(template.strip()):
        return  # one whole reference: the value itself, tested below
    assert resolve_value({"k": [template]}, ctx_with(values)) == {"k": [expected]}
    assert resolve_env({"K": template}, ctx_with(values)) == {"K": expected}


def test_a_substituted_value_that_looks_like_a_reference_is_not_substituted_again(tmp_path):
    marker = tmp_path / "pwned"
    outputs = {"a": "${steps.gen.outputs.b}", "b": f"; touch {marker}; echo "}
    command = render_command("echo ${steps.gen.outputs.a} ${steps.gen.outputs.b}", ctx_with(outputs))
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True, capture_output=True)
    assert not marker.exists()
    assert shell_args("printf '%s\\0' " + command.removeprefix("echo ")) == [outputs["a"], outputs["b"]]


def test_an_item_that_looks_like_a_reference_is_not_substituted_again(tmp_path):
    marker = tmp_path / "pwned"
    ctx = ctx_with({"b": f"; touch {marker}; echo "}, item={"x": "${steps.gen.outputs.b}", "y": "${item.x}"})
    command = render_command("echo ${item.x} ${steps.gen.outputs.b} ${item.y}", ctx)
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True, capture_output=True)
    assert not marker.exists()
    assert resolve_value("${item.y} ${item.x}", ctx) == "${item.x} ${steps.gen.outputs.b}"


def test_whole_references_keep_their_type_and_text_references_use_json():
    ctx = ctx_with({"n": 3, "list": [1, {"a": "b"}], "s": "x"}, item={"k": True})
    assert resolve_value({"n": "${steps.gen.outputs.n}", "l": " ${steps.gen.outputs.list} "}, ctx) == {
        "n": 3,
        "l": [1, {"a": "b"}],
    }
    assert resolve_value("n=${steps.gen.outputs.n} l=${steps.gen.outputs.list} ${item.k}", ctx) == (
        'n=3 l=[1,{"a":"b"}] true'
    )
    assert resolve_value({"x": 1, "y": None}, ctx) == {"x": 1, "y": None}
    assert resolve_env({"N": "${steps.gen.outputs.n}", "S": "${steps.gen.outputs.s}", "C": 3}, ctx) == {
        "N": "3",
        "S": "x",
        "C": "3",
    }
    assert render_command("echo ${steps.gen.outputs.list}", ctx) == """echo '[1,{"a":"b"}]'"""


def test_missing_and_malformed_references_are_resolve_errors():
    with pytest.raises(ResolveError, match="has no 'nope'"):
        render_command("echo ${steps.gen.outputs.nope}", ctx_with({"a": 1}))
    with pytest.raises(ResolveError, match="bad reference"):
        render_command("echo ${steps.gen}", ctx_with({"a": 1}))
    with pytest.raises(ResolveError, match="no item here"):
        resolve_value("${item}", ctx_with({"a": 1}))


# --- bounds ---------------------------------------------------------------------------------------


def test_a_command_too_long_for_exec_is_refused_naming_the_reference_and_inputs():
    big = "x" * COMMAND_MAX_BYTES
    with pytest.raises(ResolveError) as caught:
        render_command("cat ${steps.gen.outputs.big}", ctx_with({"big": big}))
    message = str(caught.value)
    assert "${steps.gen.outputs.big}" in message and str(COMMAND_MAX_BYTES) in message
    assert "inputs:" in message and "$TIDEWATCH_INPUTS" in message


def test_the_bound_is_in_utf8_bytes_and_just_under_it_runs():
    ctx = ctx_with({"v": "é" * (COMMAND_MAX_BYTES // 2 - 20)})  # fits as characters, not as bytes
    with pytest.raises(ResolveError, match="larger than"):
        render_command("printf %s ${steps.gen.outputs.v} ${steps.gen.outputs.v}", ctx)
    command = render_command("printf %s ${steps.gen.outputs.v}", ctx)
    assert len(command.encode()) <= COMMAND_MAX_BYTES
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True)
    assert result.stdout.decode() == ctx["steps"]["gen"]["outputs"]["v"]


def test_the_template_itself_counts():
    with pytest.raises(ResolveError, match="the command would be larger"):
        render_command("echo " + "y" * COMMAND_MAX_BYTES, ctx_with({}))


def test_many_repeats_of_a_big_value_stop_at_the_bound_without_building_them(monkeypatch):
    built = []
    real_quote = resolve.shlex.quote
    monkeypatch.setattr(resolve.shlex, "quote", lambda s: built.append(len(s)) or real_quote(s))
    ctx = ctx_with({"a": "z" * 100_000})
    template = " ".join(["${steps.gen.outputs.a}"] * 10_000)
    started = time.monotonic()
    with pytest.raises(ResolveError, match=r"\$\{steps.gen.outputs.a\}"):
        render_command(template, ctx)
    with pytest.raises(ResolveError):
        resolve_env({"A": template}, ctx)
    assert time.monotonic() - started < 30  # a generous bound: what proves it is the count below
    assert len(built) == 2  # the second copy passed the bound: no third was made


def test_inputs_are_bounded_even_through_whole_references():
    ctx = ctx_with({"a": "z" * (2 * 2**20)})
    ok = resolve_value({"one": "${steps.gen.outputs.a}"}, ctx)
    assert ok["one"] is ctx["steps"]["gen"]["outputs"]["a"]
    with pytest.raises(ResolveError, match=f"the inputs would be larger than {INPUTS_MAX_BYTES}"):
        resolve_value({"many": ["${steps.gen.outputs.a}"] * 10_000}, ctx)
    with pytest.raises(ResolveError, match="the inputs would be larger"):
        resolve_value("${steps.gen.outputs.a}" * 10_000, ctx)


def test_an_env_value_too_long_for_exec_is_refused():
    ctx = ctx_with({"a": "z" * ENV_VALUE_MAX_BYTES, "obj": {"k": "z" * ENV_VALUE_MAX_BYTES}})
    assert resolve_env({"A": "${steps.gen.outputs.a}"}, ctx)["A"] == ctx["steps"]["gen"]["outputs"]["a"]
    for value in ("x${steps.gen.outputs.a}", "${steps.gen.outputs.obj}"):
        with pytest.raises(ResolveError, match="env variable A would be larger"):
            resolve_env({"A": value}, ctx)
    with pytest.raises(ResolveError, match="the environment of the step would be larger"):
        resolve_env({f"A{i}": "${steps.gen.outputs.a}" for i in range(3)}, ctx)


@pytest.mark.parametrize("where", ["output", "item", "template"])
def test_a_nul_character_cannot_reach_a_command_or_env_variable(where):
    ctx = ctx_with({"a": "x\x00y"}, item="i\x00")
    ref = {"output": "${steps.gen.outputs.a}", "item": "${item}", "template": "\x00"}[where]
    with pytest.raises(ResolveError, match="NUL character"):
        render_command(f"echo {ref}", ctx)
    with pytest.raises(ResolveError, match="NUL character"):
        resolve_env({"V": ref}, ctx)
    with pytest.raises(ResolveError, match="not a valid variable name"):
        resolve_env({"A=B": "x"}, ctx)


def test_a_nul_character_in_inputs_is_kept_they_go_to_a_json_file():
    ctx = ctx_with({"a": "x\x00y"})
    assert resolve_value({"v": "${steps.gen.outputs.a}", "t": "<${steps.gen.outputs.a}>"}, ctx) == {
        "v": "x\x00y",
        "t": "<x\x00y>",
    }


def test_a_lone_surrogate_cannot_reach_a_command():
    with pytest.raises(ResolveError, match="lone surrogate"):
        render_command("echo ${steps.gen.outputs.a}", ctx_with({"a": "\ud800"}))


def test_deeply_nested_values_are_resolve_errors_not_recursion_errors():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ResolveError, match="nested too deeply"):
        render_command("echo ${item}", ctx_with({}, item=deep))


# --- conditions -----------------------------------------------------------------------------------


def test_regular_conditions_still_work():
    ctx = ctx_with({"n": 3, "region": "eu"})
    assert evaluate('steps.gen.outputs.n > 2 && steps.gen.outputs.region == "eu"', ctx) is True
    assert evaluate("steps.gen.status == 'failed'", ctx) is False
    assert evaluate("(" * 64 + "true" + ")" * 64, ctx) is True
    with pytest.raises(ResolveError, match="not true or false"):
        evaluate("steps.gen.outputs.n", ctx)
    with pytest.raises(ResolveError, match="failed"):
        evaluate("steps.nope.outputs.n > 1", ctx)
    with pytest.raises(ResolveError, match="failed"):
        evaluate("this is not CEL (", ctx)


def test_conditions_too_long_or_too_deep_never_reach_cel(monkeypatch):
    monkeypatch.setattr(resolve.cel, "evaluate", lambda *a: pytest.fail("reached CEL"))
    with pytest.raises(ResolveError, match="longer than 4096 characters"):
        evaluate("(" * 100_000 + "1" + ")" * 100_000, {})
    with pytest.raises(ResolveError, match="longer than 4096 characters"):
        evaluate(" + ".join(["1"] * 3000) + " == 3000", {})  # overflows CEL's stack: SIGSEGV
    with pytest.raises(ResolveError, match="nested deeper than 64"):
        evaluate("[" * 65 + "]" * 65 + " == []", {})


def test_a_cel_panic_is_a_resolve_error_not_a_crash(monkeypatch):
    monkeypatch.setattr(resolve, "EXPRESSION_MAX_CHARS", 10**6)
    monkeypatch.setattr(resolve, "EXPRESSION_MAX_DEPTH", 10**6)
    with pytest.raises(ResolveError, match="failed"):  # pyo3's PanicException, a BaseException
        evaluate("(" * 100_000 + "1" + ")" * 100_000, {})


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_still_go_through_evaluate(monkeypatch, exc):
    def interrupted(*args):
        raise exc

    monkeypatch.setattr(resolve.cel, "evaluate", interrupted)
    with pytest.raises(exc):
        evaluate("true", {})


def test_a_condition_with_comprehensions_is_bounded_in_time(monkeypatch):
    ctx = {"steps": {"a": {"outputs": {"xs": list(range(10))}}}}
    assert evaluate("steps.a.outputs.xs.all(x, x < 10)", ctx) is True
    assert evaluate("steps.a.outputs.xs.exists(x, x == 11)", ctx) is False
    with pytest.raises(ResolveError, match="unknown|no such|undeclared|failed"):
        evaluate("steps.a.outputs.xs.all(x, nope)", ctx)
    monkeypatch.setattr(resolve, "EXPRESSION_MAX_SECONDS", 0.5)
    nested = "steps.a.outputs.xs" + "".join(f".all(x{i}, steps.a.outputs.xs" for i in range(9))
    nested += ".all(y, true)" + ")" * 9  # 10^10 steps
    started = time.monotonic()
    with pytest.raises(ResolveError, match="took longer than 0.5s"):
        evaluate(nested, ctx)
    assert time.monotonic() - started < 5
