"""High-precision oracles, independent of the reference by construction: no module here imports
``sophia_ref`` (tests/test_oracle_independence.py holds that). Each is written from SPEC.md and the
documented knob semantics, with closed-form derivatives, exact rationals, mpmath or scipy, and
statistical bands: the problem zoo (:mod:`.zoo`), one step in exact rationals (:mod:`.step`) and the
distance of a float64 step from it (:mod:`.step_distance`), the estimators' closed forms
(:mod:`.estimators`) and acceptance bands (:mod:`.bands`), 200-step mpmath trajectories
(:mod:`.trajectory`), and where Sophia should end (:mod:`.minimizers`).

Running the reference against them is :mod:`verification.checks`."""
