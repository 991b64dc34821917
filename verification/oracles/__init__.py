"""High-precision oracles. None of these modules imports the reference's math (``sophia_ref.rule``,
``sophia_ref.estimators``): they are written independently, from SPEC.md and closed-form derivatives."""
