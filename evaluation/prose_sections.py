"""Split prose into sections, each a heading (or an FAQ-style question) and the body below it.

Recognised, outside fenced code blocks (``` or ~~~) and only at the start of a line:
- Markdown headings: `# Title` ... `###### Title` (closing `#`s dropped).
- Underlined headings (reStructuredText, Markdown setext): a one-line paragraph followed by a line of one
  repeated punctuation character (`====`, `----`, `~~~~`, ...), optionally with the same line above it.
- Man pages: the roff macros `.SH` / `.SS`, and in rendered pages an upper-case line such as `DESCRIPTION` or
  `EXIT STATUS` standing alone.
- Questions: a one-line paragraph ending in "?" (optionally `Q:`-prefixed or in bold) with text after it.

A section runs to the next heading or question, whatever its level: nested sections are sections of their own.
Text before the first heading is a section without a heading. Heading text is cleaned of markup: emphasis and
code marks, link targets, section numbers and a `Q:` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATX = re.compile(r"^(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_RULE = re.compile(r"^([=\-~^\"'`#*+:._<>])\1{2,}\s*$")
_ROFF_HEADING = re.compile(r"^\.(SH|SS)(?:\s+(.*))?$")
_ROFF_MACRO = re.compile(r"^\.[A-Za-z]{1,3}(?:\s+|$)")
_UPPER = re.compile(r"^[A-Z][A-Z0-9 ,/&()'-]*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_QUESTION_PREFIX = re.compile(r"^(?:\*\*|__)?\s*(?:Q\s*[:.]\s*|Question\s*[:.]\s*)", re.IGNORECASE)
_NUMBERING = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[IVX]+\.)\s+")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_ROLE = re.compile(r":[a-z:]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
MAX_HEADING_WORDS = 20
MAX_QUESTION_WORDS = 40


@dataclass(frozen=True)
class Section:
    line: int
    """1-based line of the heading (of the first body line for the text before any heading)."""
    heading: str | None
    """The cleaned heading or question; None for text before the first heading."""
    style: str
    """markdown, underline, roff, upper, question, or none (no heading)."""
    body: str


def clean_heading(text: str) -> str:
    """Heading text without markup: `**x**`, `` `x` ``, links, roles, numbering, a `Q:` prefix."""
    text = _LINK.sub(r"\1", text)
    text = _ROLE.sub(r"\1", text)
    text = _QUESTION_PREFIX.sub("", text.strip())
    text = re.sub(r"(\*\*|__|`+)", "", text)
    text = re.sub(r"(?<!\w)[*_](\S[^*_]*?)[*_](?!\w)", r"\1", text)
    text = _NUMBERING.sub("", text.strip())
    if text.startswith('"') and text.endswith('"') and len(text) > 1:  # .SH "SEE ALSO"
        text = text[1:-1]
    return " ".join(text.split())


def _blank(lines: list[str], i: int) -> bool:
    return i < 0 or i >= len(lines) or not lines[i].strip()


def _is_rule(line: str) -> bool:
    return bool(_RULE.match(line))


def _question(lines: list[str], i: int) -> bool:
    line = lines[i]
    if line[:1].isspace() or not _blank(lines, i - 1) or len(line.split()) > MAX_QUESTION_WORDS:
        return False
    stripped = re.sub(r"(\*\*|__|\*|_)\s*$", "", line.rstrip())
    if not stripped.endswith("?") or line.lstrip().startswith(("#", "-", "*", "+", ">", "|")):
        return False
    return any(lines[j].strip() for j in range(i + 1, min(len(lines), i + 3)))


def _upper_heading(lines: list[str], i: int) -> bool:
    line = lines[i].rstrip()
    if not line or line[0].isspace() or not _UPPER.match(line) or len(line.split()) > 6:
        return False
    if sum(c.isalpha() for c in line) < 2 or not _blank(lines, i - 1):
        return False
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    return not nxt.strip() or nxt[:1].isspace()


def heading_at(lines: list[str], i: int) -> tuple[str, str, int] | None:
    """(raw heading, style, lines it takes) when a heading starts at line `i`, else None."""
    line = lines[i]
    if m := _ATX.match(line):
        return m.group(2), "markdown", 1
    if m := _ROFF_HEADING.match(line):
        return (m.group(2) or "").strip(), "roff", 1
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    # overline + title + underline (reStructuredText)
    if _is_rule(line) and i + 2 < len(lines) and lines[i + 1].strip() and lines[i + 2].rstrip() == line.rstrip():
        if len(lines[i + 1].split()) <= MAX_HEADING_WORDS:
            return lines[i + 1].strip(), "underline", 3
    if (line.strip() and not line[0].isspace() and not _is_rule(line) and _is_rule(nxt) and _blank(lines, i - 1)
            and len(line.split()) <= MAX_HEADING_WORDS):
        return line.strip(), "underline", 2
    if _upper_heading(lines, i):
        return line.strip(), "upper", 1
    if _question(lines, i):
        return line.strip(), "question", 1
    return None


def _roff_body(lines: list[str]) -> list[str]:
    """Roff bodies: formatting-only requests dropped, `.B text`-style requests reduced to their text."""
    out = []
    for line in lines:
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if _ROFF_MACRO.match(line):
            line = _ROFF_MACRO.sub("", line)
            if not line.strip():
                continue
        out.append(line)
    return out


def sections(text: str) -> list[Section]:
    """The sections of one document, in order (see the module docstring)."""
    lines = text.splitlines()
    roff = any(_ROFF_HEADING.match(line) for line in lines)
    found: list[tuple[int, str | None, str, int]] = []  # (line index, raw heading, style, heading lines)
    fenced = False
    i = 0
    while i < len(lines):
        if _FENCE.match(lines[i]):
            fenced = not fenced
            i += 1
            continue
        hit = None if fenced else heading_at(lines, i)
        if hit is not None:
            found.append((i, hit[0], hit[1], hit[2]))
            i += hit[2]
        else:
            i += 1
    out: list[Section] = []
    starts = [(0, None, "none", 0)] + found
    for n, (start, raw, style, taken) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        body_lines = lines[start + taken: end]
        if roff:
            body_lines = _roff_body(body_lines)
        body = "\n".join(body_lines).strip("\n")
        if raw is None:
            if not body.strip():
                continue
            first = next(k for k in range(start, end) if lines[k].strip())
            out.append(Section(first + 1, None, "none", body))
        else:
            line = start + 2 if taken == 3 else start + 1  # an overlined title's own line
            out.append(Section(line, clean_heading(raw), style, body))
    return out
