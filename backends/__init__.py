"""Backends: the IR into programs that run and train it (``sim``, ``c``, ``lava``).

Installed as ``spidec.backends``; each backend is one module plus its jinja2 templates. None is
built yet: the core (IR, text form, reference) comes first, and the backends are tested against
:mod:`spidec.reference`.
"""

TARGETS: dict[str, str] = {}
