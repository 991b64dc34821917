"""Production Sophia: :class:`Sophia` (foreach and fused Triton backends) and a cheap GNB refresh."""

from .gnb import gnb_refresh, sample_labels
from .optimizer import BACKENDS, FastDiagnostics, Sophia

__all__ = ["BACKENDS", "FastDiagnostics", "Sophia", "gnb_refresh", "sample_labels"]
