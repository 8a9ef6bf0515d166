"""The package list, computed: every folder of backends/ with an __init__.py is a backend package
(spidec.backends.NAME), its templates shipped by pyproject's "*/templates/*", so adding a backend
edits no packaging file.
Everything else about the distribution is in pyproject.toml."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
BACKENDS = sorted(p.parent.name for p in (HERE / "backends").glob("*/__init__.py"))

setup(
    packages=["spidec", "spidec.passes", "spidec.frontends", "spidec.backends", "spidec.runtime",
              *(f"spidec.backends.{b}" for b in BACKENDS)],
)
