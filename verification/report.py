"""One verified claim as a row of the ``sophia-ref verify`` table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckResult:
    """``worst`` is the largest error measured, ``bound`` the largest allowed, both in ``unit``.

    ``passed`` is decided by the check itself (``worst <= bound`` unless the check
    says otherwise); ``notes`` lists what a reader must know to trust the number
    (every coordinate above 1 ulp explained, clip-boundary flips, ...).
    """

    problem: str
    check: str
    worst: float
    bound: float
    unit: str
    passed: bool
    notes: tuple[str, ...] = field(default=())

    def row(self) -> tuple[str, str, str, str, str, str]:
        return (self.problem, self.check, f"{self.worst:.3g}", f"{self.bound:.3g}",
                "pass" if self.passed else "FAIL", self.unit)
