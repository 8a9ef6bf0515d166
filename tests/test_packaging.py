"""The layout promised by DESIGN.md and the two-command setup."""

from __future__ import annotations

import re
from pathlib import Path

import spidec.backends
import spidec.frontends
import tomllib

import spidec

ROOT = Path(__file__).resolve().parents[1]


def test_frontends_and_backends_are_mapped_into_the_spidec_namespace():
    assert Path(spidec.frontends.__file__).resolve().parent == ROOT / "frontends"
    assert Path(spidec.backends.__file__).resolve().parent == ROOT / "backends"
    assert Path(spidec.__file__).resolve().parent == ROOT / "spidec"


def test_layout_directories_exist():
    for d in ("spidec", "frontends", "backends", "runtime", "tests", "bench", "examples"):
        assert (ROOT / d).is_dir(), d


def test_torch_is_optional_and_pinned_to_the_cpu_wheel_by_the_install_step():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    assert not any(d.startswith("torch") for d in deps)
    assert any(d.startswith("torch") for d in meta["project"]["optional-dependencies"]["torch"])
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_grammar_ships_with_the_package():
    assert (Path(spidec.__file__).parent / "spir.lark").exists()


def test_a_new_backend_folder_needs_no_packaging_edit():
    """setup.py computes the backend packages from backends/*/__init__.py and pyproject ships every
    backend's templates by one pattern: no file names a backend."""
    import runpy
    from unittest import mock

    captured = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        runpy.run_path(str(ROOT / "setup.py"))
    found = {p for p in captured["packages"] if p.startswith("spidec.backends.")}
    on_disk = {f"spidec.backends.{p.parent.name}" for p in (ROOT / "backends").glob("*/__init__.py")}
    assert found == on_disk and {"spidec.backends.sim", "spidec.backends.c", "spidec.backends.lava"} <= found
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["tool"]["setuptools"]["package-data"]["spidec.backends"] == ["*/templates/*"]
    assert not re.search(r"backends[./](sim|c|lava)\b", (ROOT / "pyproject.toml").read_text())


def test_the_tree_is_ruff_clean():
    """DESIGN.md's convention, kept by the suite (ruff comes with the test extra)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    done = subprocess.run([ruff, "check", "spidec", "backends", "frontends", "tests", "bench", "setup.py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
