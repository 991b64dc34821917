"""Shared test configuration: hypothesis profiles.

``CI`` set in the environment loads the derandomized ``ci`` profile, so a CI run
draws the same examples every time; locally the ``dev`` profile explores.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Without CUDA, Triton kernels run in Triton's interpreter on CPU tensors (sophia_ref.fast's triton backend is
# tested that way); the kernel is compiled on first use, after this is read.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a dependency
    pass
