"""The main job (spidec demo), the energy estimate and the reports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec import SpidecError
from spidec.report import dense_work, energy, report_dir

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the demo compiles C (needs cc and make)")
pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch", reason="the spike raster runs the sim backend")


def png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_demo_pipeline_on_a_reduced_budget(run_cli, tmp_path):
    """Three epochs instead of twenty: the digits reach far above chance (10%) already, so 0.8 is
    a threshold that a broken pipeline cannot meet and a working one always does."""
    out = tmp_path / "demo"
    code, text, err = run_cli("demo", str(EXAMPLES / "digits_fb.onnx"), "--epochs", "3", "--out", str(out))
    assert code == 0, err
    for name in ("curves.png", "rates.png", "raster.png", "graph.png"):
        assert png(out / name), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8
    assert "energy per training sample" in text and "test accuracy" in text
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 3 and 0 < hist[-1]["forward_rate"]["z"] < 1 and 0 < hist[-1]["backward_rate"]["z_couple"] < 1
    # the same run, replotted by spidec report
    for name in ("curves.png", "raster.png"):
        (out / name).unlink()
    code, text, err = run_cli("report", str(out))
    assert code == 0, err
    assert png(out / "curves.png") and png(out / "raster.png")


def test_demo_json_and_builtin_model(run_cli, tmp_path):
    code, text, err = run_cli("demo", "--epochs", "1", "--out", str(tmp_path), "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["model"] == "digits_fb" and summary["epochs"] == 1 and summary["test_accuracy"] > 0.5
    e = summary["energy"]
    assert e["spiking_uJ_per_sample"] > 0 and e["ratio"] > 1 and "Horowitz" in e["source"]


def test_energy_counts_follow_the_spikes(tmp_path):
    """The C runtime's synaptic operations equal what the spike counts imply: every forward spike of
    the hidden population adds one column of the 128 x 128 feedback weight (128 accumulates)."""
    g = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"))
    rt = spidec.backends.c.emit(g, tmp_path / "c").build()
    x = spidec.data.digits().x_test[:10]
    rt.take_work()
    counts = rt.counts(x)
    work = rt.take_work()
    T = g.simulation.T
    # the last step's spikes feed nothing (they would be delivered at step T): at most 128 per sample
    total = counts.sum()
    assert 128 * (total - 128 * len(x)) <= work["synops"]["forward"] <= 128 * total
    # multiply-accumulates: the input current (128 per nonzero pixel) and the readout (10 per active neuron)
    assert work["macs"]["forward"] == 128 * np.count_nonzero(x) + 10 * np.count_nonzero(counts)
    dense = dense_work(g)
    assert dense["forward"] == T * 128 * 128 + 64 * 128 + 128 * 10
    e = energy(g, {"synops": {"forward": 100, "backward": 0, "update": 0},
                   "macs": {"forward": 0, "backward": 0, "update": 0}}, samples=1, batch=1)
    assert e["spiking_pJ_per_sample"]["forward"] == pytest.approx(90.0)


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(SpidecError, match=r"holds no model\.spir"):
        report_dir(tmp_path)


def test_report_of_a_trained_sim_program(tmp_path, capsys):
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=tmp_path / "sim")
    assert art.run_cli("--data", "digits", "--epochs", "2", "--quiet", "--limit-train", "300") == 0
    paths = report_dir(art.out, data="digits")
    assert {p.name for p in paths} == {"graph.png", "curves.png", "rates.png", "raster.png"}
    assert all(png(p) for p in paths)
    assert np.isfinite(json.loads((art.out / "history.json").read_text())[-1]["train_loss"])
