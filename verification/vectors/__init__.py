"""Test vectors: the float64 reference's answers as data, for ports that cannot import sophia-ref.

- :mod:`.export`: ``sophia-ref vectors export DIR``: each dialect preset x each fixed-data scenario of the
  certification battery (and the zoo trajectory), the inputs and every step's expected parameters, m and h;
- :mod:`.store`: the on-disk format (``.npy`` float64 arrays, JSON metadata, a manifest of SHA-256 hashes)
  and its checks;
- ``standalone_check.py``: a numpy-only checker (no torch, no sophia_ref) that a port in another framework
  copies; it is written into every exported set.
"""

FORMAT_VERSION = 1
#: the vectors' own version: bumped whenever a change of the reference changes any exported byte (a test
#: compares a fresh export with the committed reference set, verification/vectors/reference/)
VECTORS_VERSION = 3  # 3: the near-floor estimates squash with z / (1 + |z|), not tanh (machine-independent bytes)
