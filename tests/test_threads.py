"""--threads for the C runtime (float arithmetic): the samples of a batch run on several threads,
each on its own thread-local state, and add into the shared gradient sums in sample order, so the
weights, the loss, the correct count and the work counters are those of one thread, bit for bit,
for any number of threads; in the Python API, the host executable (checkpoints byte for byte) and
under the sanitizers. Fixed point stays on one thread."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import EXAMPLES

import spidec
from spidec.cli import main
from spidec.data import digits, write_spds

torch = pytest.importorskip("torch", reason="the dropout model comes from torch")
nn = torch.nn
from test_training import ConvNet  # noqa: E402


class PoolNet(nn.Module):
    """[1, 8, 8] -> conv3 p1 (4 ch) -> avgpool 2 -> 3, a transposed-conv feedback from the pool."""

    spidec_inputs = {"x": (1, 8, 8), "z": (4, 4, 4)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fb = nn.ConvTranspose2d(4, 4, 2, stride=2, bias=False)
        self.ro = nn.Linear(64, 3)

    def forward(self, x, z):
        c = torch.clamp(self.conv(x) + self.fb(z), 0, 1)
        z_next = torch.clamp(self.pool(c), 0, 1)
        return z_next, self.ro(torch.flatten(z_next, 1))


class DropConvNet(ConvNet):
    """test_training's conv net with feedback, with dropout on both synapses (crops and flips fit)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop, self.drop_fb = nn.Dropout(0.3), nn.Dropout(0.2)  # (no parameters: the same init)

    def forward(self, x, z):
        z_next = torch.clamp(self.drop(self.conv(x)) + self.drop_fb(self.fb(z)), 0, 1)
        return z_next, self.ro(torch.flatten(z_next, 1))


def _models():
    """name -> (graph, x, y, train options): a dense MLP with feedback (digits), a conv net with
    average pooling and a transposed-conv feedback, a conv net with dropout trained with
    augmentation and normalisation."""
    ds = digits()
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    pool = spidec.from_torch(PoolNet().eval())
    drop = spidec.from_torch(DropConvNet())  # (training mode: its dropout layers count)
    return {
        "dense": (spidec.load(EXAMPLES / "digits_fb.spir"), ds.x_train[:96], ds.y_train[:96], {}),
        "conv": (pool, rng.random((80, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 80), {}),
        "dropout": (drop, rng.random((80, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 80),
                    {"augment": "crop2,flip", "normalize": "0.5;0.25"}),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("threads")
    result = {}
    for name, (g, x, y, kw) in _models().items():
        art = spidec.compile(g, target="c", out=out / name, T=8, T_back=16)
        result[name] = (art, art.build(), x, y, kw)
    return result


def _reset(rt, w0):
    """The same start for every run: the weights, no momentum, no gradient, no counted work."""
    rt.set_weights(w0)
    for i, size in enumerate(rt.sizes):
        rt.lib.spide_set_momentum(i, np.zeros(size, np.float32))
    rt.lib.spide_zero_grads()
    rt.take_work()
    rt.lib.spide_take_events()


def _train(rt, w0, x, y, threads, **kw):
    _reset(rt, w0)
    hist = rt.train(x, y, epochs=1, batch=16, lr=0.05, seed=4, threads=threads, **kw)
    assert rt.threads == threads
    weights = {k: v.tobytes() for k, v in rt.get_weights().items()}
    return weights, hist, rt.take_work(), int(rt.lib.spide_take_events())


@pytest.mark.parametrize("name", ["dense", "conv", "dropout"])
def test_weights_loss_and_work_are_the_same_for_any_number_of_threads(built, name):
    _, rt, x, y, kw = built[name]
    w0 = rt.get_weights()
    one = _train(rt, w0, x, y, 1, **kw)
    assert one[3] > 0 and one[2]["synops"]["forward"] > 0
    for n in (2, 3):
        many = _train(rt, w0, x, y, n, **kw)
        assert many[0] == one[0], f"{n} threads: other weights"
        assert many[1] == one[1], f"{n} threads: other loss or accuracy"
        assert many[2] == one[2] and many[3] == one[3], f"{n} threads: other work counters"
    # evaluation splits too: the same accuracy and loss (summed in sample order)
    rt.set_threads(1)
    ev1 = rt.evaluate(x, y)
    rt.set_threads(3)
    assert rt.evaluate(x, y) == ev1
    rt.set_threads(None)
    if kw:
        return
    # and the same as the one-sample-at-a-time loop of spide_learn and spide_step
    _reset(rt, w0)
    perm = np.random.default_rng(4).permutation(len(y))
    loss = 0.0
    for start in range(0, len(y), 16):
        idx = perm[start:start + 16]
        loss += rt.learn_batch(x[idx], y[idx])
        rt.step(0.05)
    assert {k: v.tobytes() for k, v in rt.get_weights().items()} == one[0]
    assert loss / len(y) == pytest.approx(one[1][0]["loss"], rel=1e-12)
    assert rt.take_work() == one[2]


def test_batch_one_and_more_threads_than_samples(built):
    _, rt, x, y, _ = built["dense"]
    w0 = rt.get_weights()
    for batch, n in ((1, 7), (16, 5)):
        runs = []
        for threads in (1, 4):
            _reset(rt, w0)
            rt.train(x[:n], y[:n], epochs=1, batch=batch, lr=0.05, threads=threads)
            runs.append({k: v.tobytes() for k, v in rt.get_weights().items()})
        assert runs[0] == runs[1], (batch, n)
    rt.set_threads(None)


def test_host_executable_checkpoints_are_the_same_for_any_number_of_threads(built, tmp_path):
    art, _, x, y, _ = built["dense"]
    subprocess.run(["make", "-C", str(art.out), "train"], check=True, capture_output=True)
    data = write_spds(tmp_path / "tr.spds", x, y, 10)
    usage = subprocess.run([str(art.executable), "--help"], capture_output=True, text=True).stdout
    assert "--threads N" in usage
    results = []
    for threads in (1, 2, 3):
        ck = tmp_path / f"ck{threads}.bin"
        done = subprocess.run([str(art.executable), "train", "--train", str(data), "--test", str(data), "--epochs",
                               "2", "--batch", "16", "--seed", "3", "--checkpoint", str(ck), "--quiet", "--threads",
                               str(threads)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        lines = [dict(zip(line.split()[::2], line.split()[1::2])) for line in done.stdout.splitlines()]
        results.append(([{k: e[k] for k in ("loss", "train_accuracy", "test_accuracy")} for e in lines],
                        ck.read_bytes()))
    assert results[1] == results[0] and results[2] == results[0]
    bad = subprocess.run([str(art.executable), "train", "--train", str(data), "--threads", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads" in bad.stderr


def test_threads_run_clean_under_address_and_undefined_behaviour_sanitizers(built, tmp_path):
    art, _, x, y, _ = built["dense"]
    art.build(sanitize=True)
    data = write_spds(tmp_path / "tr.spds", x[:48], y[:48], 10)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    for args in (("train", "--train", data, "--test", data, "--epochs", "1", "--batch", "8", "--threads", "2"),
                 ("eval", "--test", data, "--threads", "3")):
        done = subprocess.run([str(art.out / "train-san"), *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "runtime error" not in done.stderr and "ERROR: AddressSanitizer" not in done.stderr


def test_fixed_point_runs_on_one_thread(tmp_path):
    rt = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "fx", fixed=True,
                        T=8, T_back=16).build()
    rt.set_threads(4)
    assert rt.threads == 1


def test_spidec_train_passes_threads_to_c_and_sim(tmp_path, capsys):
    model = str(EXAMPLES / "digits_fb.onnx")
    c, sim = tmp_path / "c", tmp_path / "sim"
    assert main(["compile", model, "--target", "c", "-o", str(c), "--quiet"]) == 0
    assert main(["compile", model, "-o", str(sim), "--quiet"]) == 0
    rng = np.random.default_rng(0)
    npz = tmp_path / "mine.npz"
    np.savez(npz, x_train=rng.random((40, 64), np.float32), y_train=rng.integers(0, 10, 40),
             x_test=rng.random((12, 64), np.float32), y_test=rng.integers(0, 10, 12))
    capsys.readouterr()
    summaries = []
    for threads in ("1", "2"):
        assert main(["train", str(c), "--data", str(npz), "--epochs", "1", "--threads", threads, "--json"]) == 0
        e = json.loads(capsys.readouterr().out.splitlines()[-1])["epochs"][0]
        summaries.append((e["train_loss"], e["train_accuracy"], e["test_accuracy"]))
    assert summaries[0] == summaries[1]
    assert main(["train", str(c), "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        assert main(["train", str(sim), "--epochs", "1", "--limit-train", "32", "--steps", "1", "--threads", "1",
                     "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
