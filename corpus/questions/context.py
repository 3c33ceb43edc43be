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


def render_context(visits: Sequence[Visit], wording: dict) -> str:
    """Visits 0..i as text; from the second visit on each item is marked new or continued.

    The marks compare with the visit just before (not all history), as KARE does.
    """
    lines = [wording["header"]]
    previous: Visit | None = None
    for number, visit in enumerate(visits):
        lines.append("")
        lines.append(wording["visit"].format(visit_number=number))
        for section in SECTIONS:
            lines.append(wording["sections"][section])
            before = set(getattr(previous, section)) if previous is not None else None
            for item_number, name in enumerate(getattr(visit, section), start=1):
                mark = ""
                if before is not None:
                    mark = wording["mark_continued"] if name in before else wording["mark_new"]
                lines.append(wording["item"].format(number=item_number, name=name) + mark)
        previous = visit
    return "\n".join(lines)
