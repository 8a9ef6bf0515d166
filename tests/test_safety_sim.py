"""The sim program's robustness (issue 18): divergence stops with one line and keeps the last good
checkpoint, non-finite or non-positive settings and checkpoints are refused, a checkpoint from
inside an epoch (--save-every, --steps) resumes where it stopped with the weights of an
uninterrupted run, labels are checked (not broadcast or truncated), one trainer per checkpoint,
and the Python API takes numpy and torch alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import EXAMPLES  # noqa: E402

import spidec  # noqa: E402
from spidec import SpidecError  # noqa: E402

SMALL = ("--data", "digits", "--limit-train", "96", "--limit-test", "32", "--batch", "16", "--quiet")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety_sim") / "sim"
    return spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=out, T=8, T_back=10)


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and "Traceback" not in err, err
    return lines[0]


def _state(path) -> dict:
    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------ divergence


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(art, tmp_path, capsys, run_cli):
    ck, log, w = tmp_path / "ck.pt", tmp_path / "hist.json", tmp_path / "w.npz"
    files = ("--checkpoint", str(ck), "--log", str(log))
    assert art.run_cli(*SMALL, *files, "--epochs", "1") == 0
    good, good_log = ck.read_bytes(), log.read_text()
    capsys.readouterr()
    # --lr 1e30 exited 1 with no message and overwrote the checkpoint with NaN tensors
    assert art.run_cli(*SMALL, *files, "--epochs", "3", "--resume", "--lr", "1e30", "--save-weights", str(w)) == 3
    line = _one_line_error(capsys.readouterr().err)
    assert "training diverged at epoch 2, batch " in line and "(learning rate 1e+30 too high?)" in line, line
    assert f"the last good checkpoint {ck} (after epoch 1) is kept" in line, line
    assert ck.read_bytes() == good and log.read_text() == good_log and not w.exists()
    assert all(torch.isfinite(t).all() for t in _state(ck)["tensors"].values())
    # the same checkpoint still resumes at a sane learning rate
    assert art.run_cli(*SMALL, *files, "--epochs", "2", "--resume") == 0
    assert _state(ck)["epoch"] == 2
    # from scratch: nothing written, and it says so
    fresh = tmp_path / "fresh.pt"
    assert art.run_cli(*SMALL, "--checkpoint", str(fresh), "--log", str(log), "--epochs", "2", "--lr", "1e30") == 3
    line = _one_line_error(capsys.readouterr().err)
    assert "training diverged at epoch 1, batch " in line and line.endswith("no checkpoint was written"), line
    assert not fresh.exists()
    # a mid-epoch checkpoint is named by its batch
    mid = tmp_path / "mid.pt"
    assert art.run_cli(*SMALL, "--checkpoint", str(mid), "--log", str(log), "--epochs", "1", "--steps", "2") == 0
    assert art.run_cli(*SMALL, "--checkpoint", str(mid), "--log", str(log), "--epochs", "1", "--resume",
                       "--lr", "1e30") == 3
    assert f"the last good checkpoint {mid} (epoch 1, sample 32) is kept" in capsys.readouterr().err
    # a checkpoint not resumed from is left alone
    assert art.run_cli(*SMALL, "--checkpoint", str(mid), "--log", str(log), "--epochs", "1", "--lr", "1e30") == 3
    assert capsys.readouterr().err.rstrip().endswith(f"{mid} is left as it was")
    # spidec train: the program's line, then spidec's own, exit 1
    code, _, err = run_cli("train", str(art.out), *SMALL, "--checkpoint", str(fresh), "--lr", "1e30", "--epochs", "1")
    assert code == 1 and "training diverged at epoch 1" in err and "Traceback" not in err, err
    assert "train.py exited with 3: training diverged" in err, err


def test_the_api_stops_on_divergence_and_restores_the_epochs_weights(art):
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 64), np.float32), np.arange(40) % 10
    before = art.get_weights()
    with pytest.raises(SpidecError, match=r"training diverged at epoch 1, batch \d+: .*learning rate 1e\+30 too high"):
        art.train(x, y, epochs=2, batch=8, lr=1e30)
    after = art.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_non_finite_and_non_positive_settings_are_refused(art, capsys):
    for flags, words in ((("--lr", "nan"), "--lr must be a positive number"),
                         (("--lr", "inf"), "--lr must be a positive number"),
                         (("--lr", "-1"), "--lr must be a positive number"),
                         (("--lr", "0"), "--lr must be a positive number"),
                         (("--limit-train", "-5"), "--limit-train must be >= 1"),
                         (("--limit-train", "0"), "--limit-train must be >= 1"),
                         (("--limit-test", "-1"), "--limit-test must be >= 1"),
                         (("--steps", "0"), "--steps must be >= 1"),
                         (("--save-every", "-1"), "--save-every must be >= 0"),
                         (("--epochs", "2000000"), "--epochs must lie in 0..1000000")):
        with pytest.raises(SystemExit) as e:
            art.run_cli("--data", "digits", *flags)
        assert e.value.code == 2 and words in capsys.readouterr().err, flags
    x, y = np.zeros((8, 64), np.float32), np.arange(8)
    for lr in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(SpidecError, match="lr must be a positive number"):
            art.train(x, y, lr=lr)
    with pytest.raises(SpidecError, match="epochs must be >= 0"):
        art.train(x, y, epochs=-1)
    with pytest.raises(SpidecError, match="NaN or inf"):
        art.evaluate(np.full((8, 64), np.nan), y)


# ------------------------------------------------------------------ crafted checkpoints


def test_checkpoints_holding_nan_or_the_wrong_tensors_are_refused(art, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    assert art.run_cli(*SMALL, "--checkpoint", str(ck), "--log", str(tmp_path / "h.json"), "--epochs", "1") == 0
    state = _state(ck)
    name = next(iter(state["tensors"]))
    learnable = next(iter(state["momentum"]))

    def with_(**change):
        s = {**state, **change}
        torch.save(s, ck)  # a valid file (torch reads it) with crafted contents
        return ck.read_bytes()

    nan = {**state["tensors"], name: torch.full_like(state["tensors"][name], float("nan"))}
    inf = {**state["momentum"], learnable: torch.full_like(state["momentum"][learnable], float("inf"))}
    small = {**state["tensors"], name: state["tensors"][name].reshape(-1)[:1]}  # would broadcast into the tensor
    missing = {k: v for k, v in state["tensors"].items() if k != name}
    cases = [({"tensors": nan}, f"holds NaN or inf in tensor '{name}'"),
             ({"momentum": inf}, f"holds NaN or inf in momentum '{learnable}'"),
             ({"tensors": small}, f"tensor '{name}' has shape [1], the model's"),
             ({"tensors": {**missing, "stray": torch.zeros(1)}}, "does not hold the model's tensor"),
             ({"epoch": 2**31 - 1}, "its epoch 2147483647 is outside 0..1000000"),
             ({"epoch": -1}, "its epoch -1 is outside"),
             ({"position": {"done": 5}}, "malformed position"),
             ({"tensors": {**state["tensors"], name: "text"}}, f"tensor '{name}' is not an array of numbers")]
    for change, words in cases:
        raw = with_(**change)
        assert art.run_cli(*SMALL, "--checkpoint", str(ck), "--epochs", "2", "--resume") == 1, change
        line = _one_line_error(capsys.readouterr().err)
        assert words in line, (words, line)
        assert ck.read_bytes() == raw  # refused before training: the file is as it was


# ------------------------------------------------------------------ resuming inside an epoch


def _entries(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _same_final_state(a, b):
    sa, sb = _state(a), _state(b)
    assert sa["epoch"] == sb["epoch"] and sa.get("position") is None and sb.get("position") is None
    for part in ("tensors", "momentum"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    assert _entries(sa["history"]) == _entries(sb["history"])


def test_steps_and_save_every_checkpoints_resume_where_they_stopped(art, tmp_path):
    """--steps ending inside an epoch recorded the epoch as complete (a resume skipped the rest of
    it); a --save-every checkpoint resumes at its batch. Both end bit-identical to an
    uninterrupted run: weights, momentum, every history entry."""
    opts = [*SMALL, "--epochs", "3", "--lr-schedule", "multistep:1,2:0.5", "--warmup", "3", "--log",
            str(tmp_path / "h.json")]  # 6 batches an epoch
    assert art.run_cli(*opts, "--checkpoint", str(tmp_path / "a.pt")) == 0
    b = tmp_path / "b.pt"
    assert art.run_cli(*opts, "--checkpoint", str(b), "--steps", "8") == 0  # 6 + 2 batches
    state = _state(b)
    assert state["epoch"] == 1 and state["position"]["done"] == 2 * 16 and len(state["history"]) == 1
    partial = json.loads((tmp_path / "h.json").read_text())
    assert partial[-1]["epoch"] == 2 and partial[-1]["partial"] is True
    assert art.run_cli(*opts, "--checkpoint", str(b), "--steps", "3", "--resume") == 0  # to batch 5 of 6
    assert _state(b)["position"]["done"] == 5 * 16
    assert art.run_cli(*opts, "--checkpoint", str(b), "--resume") == 0
    _same_final_state(tmp_path / "a.pt", b)
    # a mid-epoch checkpoint belongs to its batch size and data
    c = tmp_path / "c.pt"
    assert art.run_cli(*opts, "--checkpoint", str(c), "--steps", "2") == 0
    assert art.run_cli(*opts, "--checkpoint", str(c), "--resume", "--batch", "32") == 1
    assert art.run_cli(*opts, "--checkpoint", str(c), "--resume", "--limit-train", "64") == 1


def test_a_killed_save_every_run_resumes_bit_identical(art, tmp_path):
    """Killed at a random moment after a --save-every checkpoint inside an epoch: the resumed run
    ends with the uninterrupted run's weights, momentum and history; the temporary file of a
    killed save is removed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(art.out / "train.py"), "--data", "digits", "--limit-train", "1600", "--limit-test",
            "32", "--batch", "8", "--epochs", "2", "--save-every", "3", "--quiet", "--log", str(tmp_path / "h.json")]
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    subprocess.run([*base, "--checkpoint", str(a)], check=True, env=env, timeout=600)
    p = subprocess.Popen([*base, "--checkpoint", str(b)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (b.exists() and _state(b).get("position") and _state(b)["epoch"] == 1):
        time.sleep(0.02)  # a checkpoint inside the second epoch (200 batches), then a little further
    time.sleep(float(np.random.default_rng().uniform(0.0, 0.2)))
    p.send_signal(signal.SIGKILL)
    p.wait()
    state = _state(b)
    assert state["epoch"] == 1 and state["position"] is not None, "the kill missed the second epoch"
    assert state["position"]["done"] % (3 * 8) == 0
    stale = tmp_path / f".b.pt.tmp{p.pid}"
    stale.write_bytes(b"half a checkpoint")
    subprocess.run([*base, "--checkpoint", str(b), "--resume"], check=True, env=env, timeout=600)
    _same_final_state(a, b)
    assert not stale.exists()


# ------------------------------------------------------------------ labels and limits


_STANDALONE = """
import json, sys
sys.modules["spidec"] = None  # the program copied where spidec is not installed: its own checks only
import runpy
main = runpy.run_path(sys.argv[1], run_name="train")["main"]
for args in json.loads(sys.argv[2]):
    print("rc", main(args), flush=True)
    print("--", file=sys.stderr, flush=True)
"""


def test_labels_are_one_dimensional_integers_in_the_classes(art, tmp_path, capsys):
    """(n, 1) labels reported 'train acc 2.0000' (broadcast), 2.5 was truncated to 2: refused,
    in train.py (through spidec's data reader, and alone) and in the API."""
    rng = np.random.default_rng(1)
    x, y = rng.random((48, 64), np.float32), np.arange(48) % 10
    bads = ((y.reshape(-1, 1), "training labels have shape (48, 1); give one class index per sample"),
            (np.eye(10)[y], "training labels have shape (48, 10)"),
            (y + 0.5, "training labels must be integers, got 0.5 (label 0)"),
            (np.where(y == 3, np.nan, y), "training labels must be integers, got nan (label 3)"),
            (y.astype(str), "training labels must be integers, got an array of <U"),
            (y + 1, "training labels must lie in 0..9, got 1..10"))
    runs = []
    for i, labels in enumerate([bad for bad, _ in bads] + [y, y.astype(np.float64)]):
        np.savez(tmp_path / f"d{i}.npz", x_train=x, y_train=labels, x_test=x[:8], y_test=y[:8])
        runs.append(["--data", str(tmp_path / f"d{i}.npz"), "--epochs", "1", "--batch", "16", "--checkpoint",
                     str(tmp_path / f"ck{i}.pt"), "--log", str(tmp_path / "h.json"), "--json"])
    # in spidec's process: refused (by spidec's reader of .npz files or by the program), one line each
    for args in runs[:len(bads)]:
        assert art.run_cli(*args) == 1
        assert "label" in _one_line_error(capsys.readouterr().err)
    # the program alone: its own messages; integral floats are labels, the same run as with integers
    done = subprocess.run([sys.executable, "-c", _STANDALONE, str(art.out / "train.py"), json.dumps(runs)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    codes = [ln for ln in done.stdout.splitlines() if ln.startswith("rc ")]
    errs = done.stderr.split("--\n")
    assert codes == ["rc 1"] * len(bads) + ["rc 0"] * 2, done.stdout + done.stderr
    for (_, words), err in zip(bads, errs):
        assert words in _one_line_error(err), (words, err)
    summaries = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 2 and summaries[0] == {**summaries[1], "seconds": summaries[0]["seconds"]}
    assert 0 <= summaries[0]["train_accuracy"] <= 1
    # the API: the same checks, for numpy and torch alike
    for bad, words in ((y.reshape(-1, 1), r"have shape \(48, 1\)"), (y + 0.5, "must be integers"),
                       (y[:40], "48 samples but 40 labels"), (torch.tensor(y + 1), r"0\.\.9")):
        with pytest.raises(SpidecError, match=words):
            art.evaluate(x, bad)
        with pytest.raises(SpidecError, match=words):
            art.train(x, bad, epochs=1)


def test_the_api_takes_numpy_and_torch_alike(tmp_path):
    g = spidec.load(EXAMPLES / "digits_fb.spir")
    rng = np.random.default_rng(2)
    x, y = rng.random((32, 64)), np.arange(32) % 10
    runs = []
    for i, (xs, ys) in enumerate(((x, y), (torch.tensor(x), torch.tensor(y)), (x.astype(np.float32), y + 0.0))):
        a = spidec.compile(g, target="sim", out=tmp_path / f"s{i}", T=8, T_back=10)
        hist = a.train(xs, ys, epochs=1, batch=8)
        runs.append((hist, a.evaluate(xs, ys), a.rates(xs)["z"], a.get_weights()))
    for other in runs[1:]:
        assert other[0] == runs[0][0] and other[1] == runs[0][1]
        assert np.array_equal(other[2], runs[0][2])
        assert all(np.array_equal(other[3][k], runs[0][3][k]) for k in runs[0][3])
    assert 0 <= runs[0][1]["accuracy"] <= 1
    # the emitted module's own functions take numpy too
    m, net = a.module(), a.load()
    name = next(iter(m.INPUTS))
    assert m.evaluate(net, {name: x}, y) == m.evaluate(net, {name: torch.tensor(x)}, torch.tensor(y))


# ------------------------------------------------------------------ one trainer per checkpoint


def test_a_second_trainer_on_the_same_checkpoint_is_refused(art, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    ck = tmp_path / "ck.pt"
    run = [sys.executable, str(art.out / "train.py"), *SMALL, "--epochs", "100000", "--checkpoint", str(ck),
           "--log", str(tmp_path / "a.json")]
    p = subprocess.Popen(run, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ck.exists():
            time.sleep(0.02)
        assert p.poll() is None and ck.exists()
        code = art.run_cli(*SMALL, "--epochs", "1", "--resume", "--checkpoint", str(ck), "--log",
                           str(tmp_path / "b.json"))
        line = _one_line_error(capsys.readouterr().err)
        assert code == 1 and f"checkpoint '{ck}' is in use by another training run" in line, line
        assert not (tmp_path / "b.json").exists()
    finally:
        p.kill()
        p.wait()
    # the lock goes with its process; and an in-process run leaves none behind
    assert art.run_cli(*SMALL, "--epochs", "1", "--checkpoint", str(ck), "--log", str(tmp_path / "b.json")) == 0
    with open(f"{ck}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
