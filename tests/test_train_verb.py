"""`spidec train BUILD`: one verb, one set of options and one output shape for every target; a
new toy target needs one registry entry; the step program is the only thing backends read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES
from spidec.backends.c import board as brd

from spidec.cli import main

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^epoch +1  (lr \S+  )?loss [0-9.]+  train acc [0-9.]+  test acc [0-9.]+", re.M)


def _train(capsys, build: Path, *extra: str) -> tuple[str, dict]:
    assert main(["train", str(build), "--data", "digits", "--epochs", "1", *extra]) == 0
    text = capsys.readouterr().out
    assert main(["train", str(build), "--data", "digits", "--epochs", "1", "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return text, summary


def _targets() -> list[str]:
    out = ["sim", "c", "board"]
    try:
        import lava  # noqa: F401

        out.append("lava")
    except ImportError:
        if os.environ.get("CI") == "true":
            out.append("lava")  # CI installs Lava: its absence must fail there, not skip
    return out


@pytest.mark.parametrize("target", _targets())
def test_train_any_build_with_the_same_options_and_output(target, tmp_path, capsys):
    model = str(EXAMPLES / "digits_fb.onnx")
    out = tmp_path / target
    extra: list[str] = []
    if target == "board":
        if brd.missing_tools():
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI must run the board tests ({brd.INSTALL_HINT})")
            pytest.skip(brd.INSTALL_HINT)
        args = ["--board", "mps2-an386", "--update", "online", "--sf", "10"]
    else:
        args = ["--target", target]
    if target in ("sim", "lava"):
        extra = ["--limit-train", "60" if target == "lava" else "120", "--limit-test", "60"]
    assert main(["compile", model, *args, "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    text, summary = _train(capsys, out, *extra)
    assert LINE.search(text), text
    assert summary["target"] == ("c" if target == "board" else target)
    assert len(summary["epochs"]) == 1
    e = summary["epochs"][0]
    assert {"epoch", "train_loss", "train_accuracy", "test_accuracy"} <= set(e)
    assert 0.0 <= e["test_accuracy"] <= 1.0 and e["train_loss"] > 0
    if target in ("c", "board"):  # a whole digits epoch: both learn to well above chance
        assert summary["test_accuracy"] > 0.6, summary
    # an option the target cannot honour: one line, exit 1
    refused = {"sim": "--qemu", "c": "--device", "board": "--device", "lava": "--resume"}[target]
    value = {"--device": ["cpu"]}.get(refused, [])
    assert main(["train", str(out), refused, *value]) == 1
    err = capsys.readouterr().err
    assert f"cannot honour {refused}" in err and len(err.strip().splitlines()) == 1


def test_run_is_an_alias_and_bad_folders_are_named(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing")]) == 1
    assert "is not a folder written by spidec compile" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty")]) == 1
    assert "holds no compiled program" in capsys.readouterr().err


def test_a_new_target_is_its_own_module_plus_one_registry_line(tmp_path):
    """A toy backend in a temporary module, registered with one line, compiles and trains through
    the unchanged CLI: it reads the step program only."""
    pkg = tmp_path / "toytarget"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('''
import json
from pathlib import Path
from spidec.program import require_program
from spidec.runs import write_manifest, epoch_line

TRAIN_OPTIONS = ()

class Artifact:
    def __init__(self, out, graph):
        self.out, self.graph = out, graph
    def next_steps(self):
        return f"train it: spidec train {self.out}"

def emit(g, out):
    prog = require_program(g, "the toy backend")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "order.json").write_text(json.dumps([p.name for p in prog.populations]))
    write_manifest(out, "toy", prog)
    return Artifact(out, g)

def train_build(out, opts, say):
    names = json.loads((out / "order.json").read_text())
    e = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5, "populations": names}
    say(epoch_line(e))
    return {"epochs": [e]}
''')
    script = f'''
import sys
sys.path.insert(0, {str(tmp_path)!r})
import spidec.backends as B
B.TARGETS["toy"] = B.Target("a toy target", "toytarget")   # the registry entry
from spidec.cli import main
assert main(["compile", {str(EXAMPLES / "digits_fb.onnx")!r}, "--target", "toy", "-o", {str(tmp_path / "b")!r}]) == 0
assert main(["train", {str(tmp_path / "b")!r}, "--epochs", "1"]) == 0
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train it: spidec train" in done.stdout and LINE.search(done.stdout), done.stdout


def test_nothing_in_the_core_imports_a_backend():
    core = [ROOT / "spidec" / "fixed.py", ROOT / "spidec" / "ir.py", ROOT / "spidec" / "program.py",
            *sorted((ROOT / "spidec" / "passes").glob("*.py"))]
    for path in core:
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+[.\w]*backends", text, re.M), path


def test_run_keeps_its_c_defaults_and_sim_builds_take_their_own_options(tmp_path, capsys):
    import numpy as np

    model = str(EXAMPLES / "digits_fb.onnx")
    c, sim = tmp_path / "c", tmp_path / "sim"
    assert main(["compile", model, "--target", "c", "-o", str(c), "--quiet"]) == 0
    assert main(["compile", model, "-o", str(sim), "--quiet"]) == 0
    # spidec run (the alias) trains a c build as spidec train does (with the executable's own batch)
    assert main(["run", str(c), "--epochs", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["target"] == "c"
    # an .npz data set on a c build
    rng = np.random.default_rng(0)
    npz = tmp_path / "mine.npz"
    np.savez(npz, x_train=rng.random((40, 64), np.float32), y_train=rng.integers(0, 10, 40),
             x_test=rng.random((12, 64), np.float32), y_test=rng.integers(0, 10, 12))
    assert main(["train", str(c), "--data", str(npz), "--epochs", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["epochs"]) == 1
    # train.py's own options reach a sim build; another target refuses them in one line
    assert main(["train", str(sim), "--epochs", "1", "--limit-train", "32", "--steps", "1", "--dtype", "float64",
                 "--quiet"]) == 0
    assert main(["train", str(c), "--dtype", "float64"]) == 1
    assert "does not know --dtype float64" in capsys.readouterr().err
    assert main(["train", str(c), "--epochs", "-1"]) == 1
    assert "--epochs must be at least 0" in capsys.readouterr().err
