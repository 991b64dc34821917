"""Production Sophia: :class:`Sophia` (foreach and fused Triton backends) and a cheap GNB refresh."""

from .optimizer import BACKENDS, FastDiagnostics, Sophia

__all__ = ["BACKENDS", "FastDiagnostics", "Sophia"]
