"""Frontends: model files into the spidec IR.

Installed as ``spidec.frontends``. The text form (``.spir``) is read by :mod:`spidec.text`, ONNX
models by :mod:`spidec.frontends.onnx`, PyTorch modules by :mod:`spidec.frontends.torch`
(``spidec.from_torch``) and NIR graphs by :mod:`spidec.frontends.nir` (``spidec.from_nir``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpidecError
from ..ir import Graph

#: extension -> (description, loader)
LOADERS = {
    ".spir": "spidec IR text form",
    ".onnx": "ONNX model, one step of the feedback network",
    ".nir": "NIR graph (Neuromorphic Intermediate Representation, needs spidec[nir])",
}


def load(path: str | os.PathLike, **kwargs) -> Graph:
    """Load ``path`` with the frontend its extension names."""
    suffix = Path(path).suffix.lower()
    if suffix == ".spir":
        from ..text import load as load_text

        return load_text(path, **kwargs)
    if suffix == ".onnx":
        from .onnx import load_onnx

        return load_onnx(path, **kwargs)
    if suffix == ".nir":
        from .nir import load_nir

        return load_nir(path, **kwargs)
    known = ", ".join(f"{ext} ({what})" for ext, what in LOADERS.items())
    raise SpidecError(f"cannot load {str(path)!r}: no frontend reads '{suffix or 'files without an extension'}'"
                      f" yet; spidec reads {known}",
                      hint="for a PyTorch module use --torch FILE.py:ClassName, or spidec.from_torch(module)"
                      if suffix == ".py" else None)
