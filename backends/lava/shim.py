"""Import shim for Lava (lava-nc 0.10.0) on Python 3.11+.

Lava is archived upstream; its dataclasses give mutable class-level defaults (e.g. a ByteEncoder
instance), which Python 3.11's dataclasses refuse ("mutable default ... is not allowed"). While
Lava's modules are first imported, such a default becomes ``field(default_factory=copy)``; the
patch is removed again right after. Import this module before anything from ``lava``.
"""

import copy
import dataclasses

_original = dataclasses._get_field


def _get_field(cls, a_name, a_type, *args, **kwargs):  # pragma: no cover - exercised through Lava
    default = getattr(cls, a_name, dataclasses.MISSING)
    if (default is not dataclasses.MISSING and not isinstance(default, dataclasses.Field)
            and type(default).__hash__ is None):
        setattr(cls, a_name, dataclasses.field(default_factory=lambda d=default: copy.copy(d)))
    return _original(cls, a_name, a_type, *args, **kwargs)


dataclasses._get_field = _get_field
try:
    import lava.magma.compiler.var_model
    import lava.magma.core.process.process  # noqa: F401
finally:
    dataclasses._get_field = _original
