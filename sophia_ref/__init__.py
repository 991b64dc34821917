"""sophia-ref: a numerics-verified float64 reference of the Sophia optimizer (arXiv 2305.14342).

- :mod:`sophia_ref.rule`: the update rule as pure functions, with the knobs on which dialects differ;
- :mod:`sophia_ref.dialects`: named presets (``paper``, ``official``, ``optax``, ...) and the v1/v4 conversion;
- :mod:`sophia_ref.estimators`: exact, Hutchinson, GNB and exact-GNB Hessian-diagonal estimators;
- :class:`SophiaRef`: the rule as a ``torch.optim.Optimizer`` with float64 master copies.
"""

from .dialects import DIALECTS, Dialect, get_dialect, v1_to_v4, v4_to_v1
from .estimators import exact_diagonal, gnb, gnb_expectation, hutchinson
from .optim import SophiaRef, StepDiagnostics
from .rule import Hyper, Knobs

__version__ = "0.1.0"

__all__ = [
    "DIALECTS", "Dialect", "Hyper", "Knobs", "SophiaRef", "StepDiagnostics", "exact_diagonal", "get_dialect",
    "gnb", "gnb_expectation", "hutchinson", "v1_to_v4", "v4_to_v1",
]
