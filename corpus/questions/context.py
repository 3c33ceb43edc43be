"""Patient context text in the KARE style: visits in order, items numbered and marked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SECTIONS = ("conditions", "procedures", "medications")


@dataclass(frozen=True)
class Visit:
    """What a question may show of one qualifying visit: names only."""

    conditions: Sequence[str]
    procedures: Sequence[str]
    medications: Sequence[str]


def render_visit(number: int, visit: Visit, previous: Visit | None, wording: dict) -> str:
    """The text one visit adds to a context (it starts with its own line breaks).

    A visit's text depends only on it and the visit before, so a context is the
    header followed by its visits' texts: callers render each visit once and
    reuse it in every context that shows it.
    """
    lines = ["", wording["visit"].format(visit_number=number)]
    item, new, continued = wording["item"], wording["mark_new"], wording["mark_continued"]
    for section in SECTIONS:
        lines.append(wording["sections"][section])
        names = getattr(visit, section)
        if previous is None:
            lines.extend(item.format(number=n, name=name) for n, name in enumerate(names, start=1))
        else:
            before = set(getattr(previous, section))
            lines.extend(
                item.format(number=n, name=name) + (continued if name in before else new)
                for n, name in enumerate(names, start=1)
            )
    return "\n" + "\n".join(lines)


def render_context(visits: Sequence[Visit], wording: dict) -> str:
    """Visits 0..i as text; from the second visit on each item is marked new or continued.

    The marks compare with the visit just before (not all history), as KARE does.
    """
    parts = [wording["header"]]
    previous: Visit | None = None
    for number, visit in enumerate(visits):
        parts.append(render_visit(number, visit, previous, wording))
        previous = visit
    return "".join(parts)
