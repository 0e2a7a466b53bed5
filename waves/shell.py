"""Where each `${...}` reference of a shell command sits: which quoting applies there.

A substituted value is safe only if it is quoted for its place: as a word of its own, inside
'...', inside "...", or in a here-document body. `contexts()` scans the command as written
(the author's text, never a substituted value) with the shell's quoting rules and tells, for
each reference, where it is; executions/resolve.py quotes each value for its place, and the
import refuses references where no quoting is safe (inside backquotes).
"""

from __future__ import annotations

from dataclasses import dataclass

from waves.refs import REF_RE

WORD, SINGLE, DOUBLE, BACKQUOTE, HEREDOC, COMMENT = "word", "single", "double", "backquote", "heredoc", "comment"
_OPERATOR = set(";&|<>()")
UNSAFE = "a reference inside backquotes cannot be quoted safely: write $(...) instead of `...`"


@dataclass(frozen=True)
class Context:
    kind: str  # WORD, SINGLE, DOUBLE, BACKQUOTE, HEREDOC or COMMENT
    delimiter: str = ""  # HEREDOC: the line that ends the body
    expands: bool = True  # HEREDOC: `$`, backquotes and `\` are live (the delimiter is unquoted)
    strip_tabs: bool = False  # HEREDOC: `<<-`


def _heredoc_word(text: str, i: int) -> tuple[Context, int]:
    """The here-document operator's delimiter word starting at `i` (after `<<` or `<<-`)."""
    strip = text.startswith("-", i)
    i += strip
    while i < len(text) and text[i] in " \t":
        i += 1
    start = i
    while i < len(text) and not text[i].isspace() and text[i] not in _OPERATOR:
        if text[i] in "'\"":
            end = text.find(text[i], i + 1)
            i = len(text) if end < 0 else end + 1
        else:
            i += 1 + (text[i] == "\\")
    word = text[start:i]
    bare = word.replace("'", "").replace('"', "").replace("\\", "")
    return Context(HEREDOC, bare, expands=word == bare, strip_tabs=strip), i


def contexts(command: str) -> list[Context]:
    """One Context per REF_RE match of `command`, in order."""
    return _scan(command)[0]


def mangled_heredoc_line(command: str) -> str | None:
    """Why /bin/sh would not print a line of one of `command`'s here-documents as written, or
    None. dash (Debian's /bin/sh) drops a byte of a body line that starts with part of the
    delimiter followed by a non-ASCII character: under <<EOF, "Eé" prints "E" and a stray
    byte. No quoting helps inside a here-document, so such a command is refused."""
    for context, line in _scan(command)[1]:
        if _dash_mangles(line.lstrip("\t") if context.strip_tabs else line, context.delimiter):
            return (
                f"the here-document line {line[:40]!r} starts with part of its delimiter "
                f"{context.delimiter!r} followed by a non-ASCII character, which /bin/sh (dash) "
                "does not print as written: choose a delimiter that no line starts with"
            )
    return None


def _dash_mangles(line: str, delimiter: str) -> bool:
    a, b = line.encode(), delimiter.encode()
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return 0 < k < len(a) and a[k] >= 0x80


def _scan(command: str) -> tuple[list[Context], list[tuple[Context, str]]]:
    """The Context of each reference, and every here-document body line with its Context."""
    refs = {m.start(): m.end() for m in REF_RE.finditer(command)}
    found: list[Context] = []
    lines: list[tuple[Context, str]] = []
    stack = [WORD]  # WORD, SINGLE, DOUBLE, BACKQUOTE, or "(" (inside $( ) or a subshell)
    pending: list[Context] = []  # here-documents whose body starts at the next newline
    i, n = 0, len(command)
    while i < n:
        if i in refs:
            top = stack[-1]
            found.append(Context(WORD if top == "(" else top))
            i = refs[i]
            continue
        c, top = command[i], stack[-1]
        if top == SINGLE:
            if c == "'":
                stack.pop()
        elif c == "\\":
            i += 1
        elif top == DOUBLE:
            if c == '"':
                stack.pop()
            elif command.startswith("$(", i):
                stack.append("(")
                i += 1
            elif c == "`":
                stack.append(BACKQUOTE)
        elif c == "`" and top == BACKQUOTE:
            stack.pop()
        elif c == "'":
            stack.append(SINGLE)
        elif c == '"':
            stack.append(DOUBLE)
        elif c == "`":
            stack.append(BACKQUOTE)
        elif c == "(":
            stack.append("(")
        elif c == ")" and top == "(":
            stack.pop()
        elif c == "#" and (i == 0 or command[i - 1].isspace() or command[i - 1] in ";&|("):
            end = command.find("\n", i)
            end = n if end < 0 else end
            found.extend(Context(COMMENT) for start in refs if i <= start < end)
            i = end
            continue
        elif command.startswith("<<", i) and not command.startswith("<<<", i):
            context, i = _heredoc_word(command, i + 2)
            pending.append(context)
            continue
        elif c == "\n" and pending:
            i = _bodies(command, i + 1, pending, refs, found, lines)
            pending = []
            continue
        i += 1
    return found, lines


def _bodies(command: str, i: int, pending: list[Context], refs: dict, found: list, lines: list) -> int:
    """Skip the here-document bodies that start at `i`, noting their lines and references."""
    for context in pending:
        while i < len(command):
            end = command.find("\n", i)
            end = len(command) if end < 0 else end
            line = command[i:end]
            if (line.lstrip("\t") if context.strip_tabs else line) == context.delimiter:
                i = end + 1
                break
            found.extend(context for start in refs if i <= start < end)
            lines.append((context, line))
            i = end + 1
    return i
