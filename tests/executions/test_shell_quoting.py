"""A substituted value reaches the command as the literal text it is, wherever the reference
stands: a word of its own, inside '...' or "...", inside $(...), in a here-document, in a
comment. Each template below runs under /bin/sh and must print exactly what it would print
if the value had been typed there as plain text."""

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions.resolve import ResolveError, render_command
from waves import shell

REF = "${steps.gen.outputs.v}"



def heredoc(value: str, body: str, printed: str, strip: bool = False) -> str | None:
    """What a here-document delimited by EOF prints when `value` makes its body `body`, or None
    when the value must be refused: it holds a line that would end the body early, or a body
    line /bin/sh (dash) would not print as written (part of the delimiter, then a non-ASCII
    character)."""
    if "EOF" in [line.lstrip("\t") if strip else line for line in value.split("\n")]:
        return None
    for line in body.split("\n"):
        line = line.lstrip("\t") if strip else line
        k = next((k for k in range(3) if not line.startswith("EOF"[: k + 1])), 3)
        if 0 < k < len(line) and not line[k].isascii():
            return None
    return printed


# template -> what it prints for a value v (None: the value is refused with ResolveError)
TEMPLATES = {
    f"printf '%s|' {REF}": lambda v: v + "|",
    f"printf '%s|' \"pre-{REF}-post\"": lambda v: f"pre-{v}-post|",
    f"printf '%s|' 'pre-{REF}-post'": lambda v: f"pre-{v}-post|",
    f"printf '%s|' \"$(printf '%s' \"{REF}\")\"": lambda v: v.rstrip("\n") + "|",
    f"printf '%s|' $(printf '%s' 'x') {REF}": lambda v: "x|" + v + "|",
    f"x={REF}; printf '%s|' \"$x\"": lambda v: v + "|",
    f"cat <<EOF\npre-{REF}-post\nEOF": lambda v: heredoc(v, f"pre-{v}-post", f"pre-{v}-post\n"),
    f"cat <<'EOF'\n{REF}\nEOF\nprintf done": lambda v: heredoc(v, v, f"{v}\ndone"),
    f"cat <<-EOF\n\t{REF}\n\tEOF": lambda v: heredoc(v, f"\t{v}", "\n".join(x.lstrip("\t") for x in v.split("\n")) + "\n", strip=True),
    f"printf '%s|' {REF} # it's {REF}\nprintf after": lambda v: v + "|after",
}

values = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
nasty = st.sampled_from(
    ["$(touch pwned)", "`touch pwned`", "'; touch pwned; echo '", '"; touch pwned; echo "', "a\nEOF\ntouch pwned",
     "\\", "$HOME", "${steps.gen.outputs.v}", "*", "-n", "\n", "'", '"', "EOF", "E\x80", "x\nEOé", "\tEé"]
)  # fmt: skip


def run(command: str, cwd) -> bytes:
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, cwd=cwd, timeout=10)
    return result.stdout  # bytes: no newline translation


@pytest.mark.parametrize("template", list(TEMPLATES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(values, nasty))
def test_a_value_prints_as_typed_wherever_the_reference_stands(tmp_path, template, value):
    expected = TEMPLATES[template](value)
    ctx = {"steps": {"gen": {"outputs": {"v": value}}}}
    if expected is None:
        with pytest.raises(ResolveError, match="here-document"):
            render_command(template, ctx)
        return
    printed = run(render_command(template, ctx), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing the value said was run
    assert printed.decode("utf-8") == expected


def test_a_reference_inside_backquotes_is_refused():
    with pytest.raises(ResolveError, match="backquotes"):
        render_command(f"echo `echo {REF}`", {"steps": {"gen": {"outputs": {"v": "x"}}}})


def test_contexts_follow_the_shells_quoting():
    kinds = [c.kind for c in shell.contexts(
        f"a {REF} '{REF}' \"{REF} $( {REF} \"{REF}\" ) \" `{REF}` # '{REF}\n"
        f"cat <<E1 <<'E2'\n{REF}\nE1\n{REF}\nE2\necho \\'{REF}"
    )]  # fmt: skip
    assert kinds == ["word", "single", "double", "word", "double", "backquote", "comment",
                     "heredoc", "heredoc", "word"]  # fmt: skip
