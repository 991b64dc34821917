"""The reference paired with the oracles: each module runs ``sophia_ref`` against one oracle of
:mod:`verification.oracles` and offers ``checks(quick) -> [(name, thunk)]``, a thunk returning one
:class:`~verification.report.CheckResult` or a list of them, for ``sophia-ref verify``
(:mod:`verification.run`): :mod:`.step` (one step vs exact rationals, with the random states of
:mod:`.step_states`), :mod:`.estimators`, :mod:`.trajectory` and :mod:`.minimizers`."""
