"""The ``lower`` pass: the step program every backend reads (see :mod:`spidec.program`)."""

from ..program import lower

__all__ = ["lower"]
