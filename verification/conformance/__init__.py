"""Certification as a pipeline: one IMPL string flows one way through six stages, one module each.

    resolve   ->  discover  ->  detect    ->  run        ->  judge      ->  report
    IMPL, D       API, state    knobs,        battery,       tolerances,    table,
    -> adapter    slots         cross-check   two tiers      verdict,       JSON
                                                             findings

- :mod:`.resolve`: ``module:object`` or a short name -> an adapter; ``--dialect`` -> a dialect;
- :mod:`.discover`: the optimizer's constructor keywords and which state entries hold m, h and
  the counters, found by stepping a probe copy;
- :mod:`.detect`: the dialect's knobs from targeted probes, and a lock-step cross-check;
- :mod:`.scenarios` and :mod:`.run`: the battery, and each scenario in two tiers
  (teacher-forced, free-running) beside the float64 reference;
- :mod:`.judge`: the tolerance model, the verdict and the ranked findings of a certificate;
- :mod:`.report`: the conformance matrix and the JSON certificates.

:func:`.pipeline.certify_spec` runs the stages for one IMPL; :func:`.pipeline.certify` runs the
last three for an adapter already in hand.
"""

from .judge import (FLOAT64_GROWTH_ULPS_PER_STEP, FLOAT64_STEP_ULPS, LOW_PRECISION_FACTOR, LOW_PRECISION_FLOOR_ULPS,
                    Certificate, bounds, violations)
from .pipeline import certify
from .run import NaiveAdapter, ScenarioResult, Worst, _clip_disagreements, reference_adapter, run_scenario
from .scenarios import Scenario, battery, hyperparameters, make_data, refresh_steps

__all__ = ["Certificate", "FLOAT64_GROWTH_ULPS_PER_STEP", "FLOAT64_STEP_ULPS", "LOW_PRECISION_FACTOR",
           "LOW_PRECISION_FLOOR_ULPS", "NaiveAdapter", "Scenario", "ScenarioResult", "Worst", "battery", "bounds",
           "certify", "hyperparameters", "make_data", "reference_adapter", "refresh_steps", "run_scenario",
           "violations"]
