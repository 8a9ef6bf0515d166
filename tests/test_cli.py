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
    assert "h_h      h -> h  1" in out  # the feedback synapse, delayed
    assert "step order: h, y" in out
    assert "synapse h_h: h -> h delay=1 = dense(@h_h.weight)" in out


def test_reference_on_digits_reports_rates_loss_and_gradients(run_cli, examples_dir):
    code, out, err = run_cli("reference", str(examples_dir / "digits_fb.spir"), "--data", "digits",
                             "--batch", "8", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["residual"] < 1e-9 and report["iterations"] > 1
    h = report["populations"]["h"]
    assert h["neurons"] == 128 and abs(h["silent"] + h["active"] + h["saturated"] - 1) < 1e-12
    assert 0 < report["readouts"]["y"]["loss"] < 10
    assert set(report["gradients"]) == {"h.bias", "y.bias", "x_h.weight", "h_h.weight", "h_y.weight"}
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
    assert code == 1 and "no frontend reads '.onnx'" in err and ".spir" in err


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
