"""Benchmarks only: not part of the test suite (pyproject's testpaths is ["tests"]).

Run explicitly:  python -m pytest benchmarks/ --benchmark-only
"""

import os
import sys

# Let `pytest benchmarks/` (not only `python -m pytest`, which adds the cwd) import sophia_ref from a checkout,
# and let the benchmark modules import the shared _problem helper.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(_HERE), _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)
