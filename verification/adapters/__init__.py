"""Adapters: how the conformance harness drives an implementation under test (see :mod:`.base`)."""

from .base import Adapter, Hyperparameters, Refresh
from .convention import ConventionAdapter

__all__ = ["Adapter", "ConventionAdapter", "Hyperparameters", "Refresh"]
