"""The hand-written reading of a results page, checked against the page's own targets.

A reading is a bullet of `<page stem>_notes.md`. One that discusses a target names it,
and the value it was written against, in a comment the page does not show:

    - **LM on held-out paraphrases (missed by 0.035).** ... <!-- checks: LM answers
      held-out people ≥ 0.90 (held-out paraphrases) = 0.865 -->

The page keeps a reading whose value still matches the target's measured number (to the
three decimals the page prints), and flags one that no longer does, or that names a
target the page does not have, so the page never shows a reading its own table
contradicts. A bullet without a check is kept and marked as unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from supervised_sae.report.targets import Target

CHECK = re.compile(r"<!--\s*checks:\s*(?P<claim>.+?)\s*=\s*(?P<value>-?\d+(?:\.\d+)?)\s*-->",
                   re.DOTALL)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TOLERANCE = 5e-4  # the page prints three decimals


def bullets(text: str) -> tuple[list[str], list[str]]:
    """(the lines before the first bullet, each bullet with its continuation lines)."""
    head: list[str] = []
    items: list[list[str]] = []
    for line in text.strip().splitlines():
        if line.startswith("- "):
            items.append([line])
        elif items:
            items[-1].append(line)
        else:
            head.append(line)
    return head, ["\n".join(item).rstrip() for item in items]


def _normalise(claim: str) -> str:
    return " ".join(claim.split())


def check_reading(bullet: str, found: Sequence[Target]) -> str:
    """One bullet as the page shows it: unchanged when its value still holds, else
    flagged with what the table says now."""
    match = CHECK.search(bullet)
    if match is None:
        return bullet.replace("- ", "- *(unchecked: names no target)* ", 1)
    text = (bullet[: match.start()] + bullet[match.end():]).rstrip()
    claim, written = _normalise(match["claim"]), float(match["value"])
    target = next((t for t in found if _normalise(t.claim).startswith(claim)), None)
    if target is None:
        return text.replace("- ", f"- **Out of date:** it reads the target “{claim}”, "
                                  "which this page no longer has. ", 1)
    number = NUMBER.search(target.measured)
    measured = float(number.group()) if number else None
    if measured is not None and abs(measured - written) <= TOLERANCE:
        return text
    now = target.measured if measured is None else f"{measured:.3f}"
    return text.replace("- ", f"- **Out of date:** written against {written:.3f}; the "
                              f"table now says {now}. ", 1)


def checked_notes(text: str, found: Sequence[Target]) -> str:
    """The notes file's text with every reading checked against the page's targets."""
    head, items = bullets(text)
    return "\n".join([*head, *(check_reading(item, found) for item in items)]).strip()
