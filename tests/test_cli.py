"""The command line: output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spidec


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"spidec {spidec.__version__}"


def test_inspect_prints_tables_and_the_ir(run_cli, examples_dir):
    code, out, err = run_cli("inspect", str(examples_dir / "digits_fb.spir"))
    assert code == 0 and err == ""
    assert "digits_fb: 1 input, 1 population, 1 readout, 3 synapses, 25,994 parameters, 128 neurons" in out
    assert "fb       z -> z       1" in out  # the feedback synapse, delayed
    assert "step order: z, logits" in out
    assert "synapse fb: z -> z delay=1 = dense(@fb.weight)" in out


def test_reference_on_digits_reports_rates_loss_and_gradients(run_cli, examples_dir):
    code, out, err = run_cli("reference", str(examples_dir / "digits_fb.spir"), "--data", "digits",
                             "--batch", "8", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["residual"] < 1e-9 and report["iterations"] > 1
    h = report["populations"]["z"]
    assert h["neurons"] == 128 and abs(h["silent"] + h["active"] + h["saturated"] - 1) < 1e-12
    assert 0 < report["readouts"]["logits"]["loss"] < 10
    assert set(report["gradients"]) == {"z.bias", "logits.bias", "fc_in.weight", "fb.weight", "readout.weight"}
    assert all(v["norm"] > 0 for v in report["gradients"].values())
    code, out, _ = run_cli("reference", str(examples_dir / "digits_fb.spir"), "--batch", "2")
    assert code == 0 and "converged in" in out and "exact implicit gradient" in out


@pytest.mark.parametrize(
    "content, message",
    [
        ("input x [2]\npopulation h [2] $", "bad.spir:2:18: unexpected character '$'"),
        ("input x [2]\npopulation h [3]\nsynapse s: x -> h = dense([[1.0, 2.0]])",
         "bad.spir:3: synapse 's' delivers shape [1] to 'h' of shape [3]"),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = dense(@w)", "refers to tensor @w"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(run_cli, tmp_path, content, message):
    bad = tmp_path / "bad.spir"
    bad.write_text(content)
    code, out, err = run_cli("inspect", str(bad))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("spidec: error: ") and message in err, err
    assert "Traceback" not in err


def test_missing_file_and_unknown_format(run_cli, tmp_path):
    code, _, err = run_cli("inspect", str(tmp_path / "nope.spir"))
    assert code == 1 and "not found" in err
    (tmp_path / "m.onnx").write_bytes(b"")
    code, _, err = run_cli("inspect", str(tmp_path / "m.onnx"))
    assert code == 1 and "m.onnx: the file is empty, not an ONNX model" in err
    (tmp_path / "m.pb").write_bytes(b"")
    code, _, err = run_cli("inspect", str(tmp_path / "m.pb"))
    assert code == 1 and "no frontend reads '.pb'" in err and ".spir" in err and ".onnx" in err


def test_model_option_errors(run_cli, examples_dir, tmp_path):
    code, _, err = run_cli("inspect")
    assert code == 1 and "no model given" in err
    code, _, err = run_cli("inspect", str(examples_dir / "digits_fb.spir"), "--state", "z:z_next")
    assert code == 1 and "--state applies to ONNX and --torch models only" in err
    code, _, err = run_cli("inspect", "--torch", str(tmp_path / "nope.py") + ":X")
    assert code == 1 and "not found" in err
    code, _, err = run_cli("inspect", "--torch", str(examples_dir / "models.py") + ":Nope")
    assert code == 1 and "defines no 'Nope'" in err
    code, _, err = run_cli("inspect", "--torch", "x.py", "--input", "bad")
    assert code == 2 and "NAME:SHAPE" in err


def test_torch_class_with_shapes_on_the_command_line(run_cli, tmp_path):
    (tmp_path / "cell.py").write_text(
        "import torch\n"
        "class Cell(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = torch.nn.Linear(3, 5)\n"
        "        self.b = torch.nn.Linear(5, 5, bias=False)\n"
        "        self.c = torch.nn.Linear(5, 2)\n"
        "    def forward(self, x, h):\n"
        "        h2 = torch.clamp(self.a(x) + self.b(h), 0, 1)\n"
        "        return h2, self.c(h2)\n")
    code, out, err = run_cli("inspect", "--torch", f"{tmp_path / 'cell.py'}:Cell", "--input", "x:3",
                             "--input", "h:5", "--state", "h:h2", "--outputs", "h2,y", "--no-text")
    assert code == 0, err
    assert "b        h -> h  1" in out and "c        h -> y  0" in out


@pytest.mark.parametrize("command", ["inspect", "reference", "compile", "train", "demo", "report", "dataset"])
def test_every_subcommand_explains_itself_with_examples(run_cli, command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "examples:" in out and f"spidec {command}" in out


def test_json_output_for_scripts(run_cli, examples_dir, tmp_path):
    code, out, _ = run_cli("inspect", str(examples_dir / "digits_fb.spir"), "--json")
    assert code == 0 and json.loads(out)["parameters"] == 25994
    code, out, _ = run_cli("compile", str(examples_dir / "digits_fb.spir"), "-o", str(tmp_path / "b"), "--json")
    assert code == 0 and "model.py" in json.loads(out)["files"]
    code, out, _ = run_cli("compile", str(examples_dir / "digits_fb.spir"), "-o", str(tmp_path / "c"), "--quiet")
    assert code == 0 and out == ""


def test_usage_errors_exit_2(run_cli, examples_dir):
    assert run_cli()[0] == 2
    assert run_cli("frobnicate")[0] == 2
    code, _, err = run_cli("reference", str(examples_dir / "digits_fb.spir"), "--batch", "0")
    assert code == 2 and "--batch must be at least 1" in err


def test_non_contracting_model_fails_with_the_residual(run_cli, tmp_path):
    bad = tmp_path / "osc.spir"
    bad.write_text("input x [2]\npopulation h [2]\nsynapse a: x -> h = scale(0.9)\n"
                   "synapse fb: h -> h delay=1 = scale(-3.0)\n")
    code, _, err = run_cli("reference", str(bad), "--batch", "1")
    assert code == 1 and "did not settle" in err and "residual" in err and err.count("\n") == 1


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("spidec")
    if not exe.exists():
        pytest.skip(f"no console script beside {sys.executable} (package not installed into this environment)")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env={**os.environ}, check=True)
    assert out.stdout.strip().startswith("spidec ")


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "spidec", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and spidec.__version__ in out.stdout + out.stderr
