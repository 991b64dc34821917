"""Independent checks of the reference: high-precision oracles and the conformance harness.

Nothing here may import the reference's math (``sophia_ref.rule``): an oracle that
shares code with what it checks proves nothing.
"""
