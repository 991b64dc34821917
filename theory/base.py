"""What every theory experiment returns, so the CLI, the tests and the results page treat them alike.

An experiment is a module in ``theory/`` with

    NAME: str                       # the CLI name, e.g. "toy2d"
    CLAIM: str                      # the paper's claim it tests, one sentence
    def run(quick: bool = False, seeds: int | None = None, progress=None) -> Result

``run`` is seeded and deterministic for given arguments; ``progress(message)`` (optional) is called
as work advances. ``quick`` must finish within the time its module docstring states (tests run it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Progress = Callable[[str], None]


@dataclass
class Result:
    """An experiment's data and verdict.

    ``columns`` and ``rows`` make the printed table; ``data`` holds everything else a test or a plot
    needs (JSON-serialisable); ``claim_held`` is the verdict on the paper's claim at this scale
    (None where the experiment only measures); ``summary`` is one sentence saying so, with numbers.
    ``draw(path)`` writes the figure (matplotlib, imported inside).
    """

    name: str
    claim: str
    columns: list[str]
    rows: list[list[Any]]
    summary: str
    claim_held: bool | None
    data: dict = field(default_factory=dict)
    draw: Callable[[str], None] | None = None

    def table(self) -> str:
        cells = [[str(c) for c in self.columns]] + [[_fmt(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])

    def markdown(self) -> str:
        head = "| " + " | ".join(map(str, self.columns)) + " |"
        rule = "|" + "---|" * len(self.columns)
        body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join([head, rule] + body)

    def to_json(self) -> dict:
        return {"name": self.name, "claim": self.claim, "columns": self.columns, "rows": self.rows,
                "summary": self.summary, "claim_held": self.claim_held, "data": self.data}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
