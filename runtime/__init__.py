"""The spidec C runtime (``include/spide.h``, ``src/*.c``), installed as ``spidec.runtime`` so
that the C backend finds its sources in any installation. Nothing here is Python code."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
