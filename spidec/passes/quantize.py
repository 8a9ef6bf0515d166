"""``quantize``: fixed-point scales for integer-only training (see :mod:`spidec.fixed`).

Not part of the default pipeline: ``spidec compile --fixed`` (or ``--board``) runs it after
``schedule``; from Python, ``spidec.passes.quantize(spidec.passes.run(g))``.
"""

from ..fixed import quantize

__all__ = ["quantize"]
