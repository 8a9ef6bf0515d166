"""The C runtime's robustness (issue 18): divergence stops training and keeps the last good
checkpoint, mid-epoch checkpoints resume where they stopped (bit-identical), the readers refuse
non-regular and oversized files unread, the trainer's flags are parsed strictly, two trainers
cannot share a checkpoint, and a model without a dense weight builds under -Werror. Each case runs
the compiled host trainer (the reader cases under AddressSanitizer and UBSan too)."""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, _u

import spidec
from spidec import Conv2d, Flatten, Graph, Scale, SpidecError
from spidec.data import write_spds

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the C backend needs a C compiler (cc) and make")

SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """digits_fb (T=8, T_back=10) with its sanitizer build, and 24 random samples of 10 classes."""
    root = tmp_path_factory.mktemp("safety_c")
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=root / "c", T=8, T_back=10)
    art.build(sanitize=True)
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 64), np.float32), np.arange(24) % 10
    return art, write_spds(root / "d.spds", x, y, 10), (x, y)


def run(exe, *args, env=None, timeout=120, **kw):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def san(art) -> Path:
    return art.out / "train-san"


def clean(done) -> bool:
    return "runtime error" not in done.stderr and "ERROR: AddressSanitizer" not in done.stderr \
        and "LeakSanitizer" not in done.stderr


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def fields(line: str) -> dict[str, str]:
    f = line.split()
    return dict(zip(f[::2], f[1::2]))


def resign(raw: bytes | bytearray) -> bytes:
    """The bytes with their CRC32 trailer recomputed (a crafted file that passes the CRC check)."""
    body = bytes(raw[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def to_v1(raw: bytes) -> bytes:
    """A format-2 checkpoint as format 1 wrote it (no position in the epoch)."""
    assert struct.unpack("<I", raw[4:8])[0] == 2
    return resign(raw[:4] + struct.pack("<I", 1) + raw[8:36] + raw[52:])


# ---------------------------------------------------------------------------- divergence


def test_divergence_stops_and_keeps_the_last_good_checkpoint(built, tmp_path):
    """--lr 1e30 on resume used to print `loss -nan`, exit 0 and save NaN weights over the good
    checkpoint: now exit 3, one line naming the epoch, batch and learning rate, the checkpoint
    byte-identical to the last good one."""
    art, data, _ = built
    ck = tmp_path / "ck.bin"
    base = ("train", "--train", data, "--batch", "4", "--checkpoint", ck, "--quiet")
    assert run(art.executable, *base, "--epochs", "2").returncode == 0
    good = ck.read_bytes()
    done = run(art.executable, *base, "--epochs", "4", "--resume", "--lr", "1e30")
    assert done.returncode == 3, done.stderr
    assert one_line(done.stderr), done.stderr
    assert "training diverged at epoch 3, batch" in done.stderr and "the loss is nan" in done.stderr
    assert "learning rate 1e+30 too high?" in done.stderr
    assert f"the last good checkpoint {ck} (after epoch 2) is kept" in done.stderr
    assert "epoch 3" not in done.stdout  # no epoch line of NaN
    assert ck.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.bin", "ck.bin.lock"]  # no temporary file left
    ev = run(art.executable, "eval", "--test", data, "--checkpoint", ck)
    assert ev.returncode == 0 and "test_accuracy" in ev.stdout
    # one batch an epoch: the step of epoch 1's batch or a later one turns the weights NaN; whichever
    # check sees it first (the next batch's loss or the weights after the step), nothing non-finite is saved
    fresh = tmp_path / "fresh.bin"
    done = run(art.executable, "train", "--train", data, "--batch", "24", "--epochs", "5", "--lr", "1e30",
               "--checkpoint", fresh, "--quiet")
    assert done.returncode == 3 and one_line(done.stderr), done.stderr
    assert "training diverged at epoch" in done.stderr and ("the loss is" in done.stderr
                                                            or "holds NaN or inf after its step" in done.stderr)
    if fresh.exists():
        assert "is kept" in done.stderr
        assert run(art.executable, "eval", "--test", data, "--checkpoint", fresh).returncode == 0
    # without --checkpoint: the run stops all the same
    done = run(art.executable, "train", "--train", data, "--batch", "4", "--epochs", "5", "--lr", "1e30", "--quiet")
    assert done.returncode == 3 and "nothing was saved (no --checkpoint)" in done.stderr, done.stderr


def test_a_checkpoint_holding_nan_is_refused(built, tmp_path):
    """A CRC-valid checkpoint with one NaN weight (or an inf momentum): eval and resume refuse it
    in one line, naming the tensor; so does the sanitizer build, cleanly."""
    art, data, _ = built
    ck = tmp_path / "ck.bin"
    assert run(art.executable, "train", "--train", data, "--epochs", "1", "--checkpoint", ck, "--quiet").returncode == 0
    raw = bytearray(ck.read_bytes())
    names = [line.split()[1] for line in run(art.executable, "info").stdout.splitlines() if line.startswith("tensor ")]
    for offset, value, says in ((52, math.nan, f"tensor {names[0]} holds NaN or inf"),
                                (len(raw) - 8, math.inf, "the momentum of tensor")):
        bad = bytearray(raw)
        struct.pack_into("<f", bad, offset, value)
        path = tmp_path / "bad.bin"
        path.write_bytes(resign(bad))
        for exe in (art.executable, san(art)):
            for args in (("eval", "--test", data, "--checkpoint", path),
                         ("train", "--train", data, "--epochs", "2", "--checkpoint", path, "--resume", "--quiet")):
                done = run(exe, *args, env=SAN_ENV)
                assert done.returncode == 1 and says in done.stderr and "refused" in done.stderr, done.stderr
                assert one_line(done.stderr) and clean(done), done.stderr
        assert path.read_bytes() == resign(bad)  # the refused resume wrote nothing over it
    from spidec.export import _c_build_graph, _read_c_checkpoint

    with pytest.raises(SpidecError, match=f"tensor {names[0]} holds NaN or inf"):  # spidec export's reader too
        bad = bytearray(raw)
        struct.pack_into("<f", bad, 52, math.nan)
        path.write_bytes(resign(bad))
        _read_c_checkpoint(path, _c_build_graph(art.out), None)


def test_python_runtime_raises_on_divergence(built):
    """CRuntime.train/train_epoch/learn_batch raise SpidecError instead of returning NaN; learning
    rates that are not finite and positive are refused."""
    art, _, (x, y) = built
    rt = art.runtime()
    w0 = rt.get_weights()
    for bad in (math.nan, math.inf, -1.0, 0.0, 1e-50):
        with pytest.raises(SpidecError, match="learning rate must be a finite number > 0"):
            rt.train(x, y, epochs=1, batch=4, lr=bad)
        with pytest.raises(SpidecError, match="learning rate must be a finite number > 0"):
            rt.set_lr(bad)
        with pytest.raises(SpidecError, match="learning rate must be a finite number > 0"):
            rt.step(bad)
    with pytest.raises(SpidecError, match=r"training diverged at epoch \d+, batch \d+: the loss is nan "
                                          r"\(learning rate 1e\+30 too high\?\)"):
        rt.train(x, y, epochs=5, batch=4, lr=1e30)
    # a NaN input weight silences its neuron's spikes, not the loss: the weights check names it
    zeros = {k: np.zeros_like(v) for k, v in w0.items()}
    rt.set_momentum(zeros)  # (the diverged run left NaN momentum; its last batch's gradients were dropped)
    w = {k: v.copy() for k, v in w0.items()}
    w["fc_in.weight"][0] = np.nan
    rt.set_weights(w)
    with pytest.raises(SpidecError, match=r"training diverged in epoch 1: tensor 'fc_in\.weight' holds NaN or inf"):
        rt.train(x, y, epochs=1, batch=4)
    rt.set_weights(w0)
    rt.set_momentum(zeros)
    w = {k: v.copy() for k, v in w0.items()}
    w["readout.weight"][:] = np.inf
    rt.set_weights(w)
    with pytest.raises(SpidecError, match=r"the loss of this batch is (nan|inf)"):
        rt.learn_batch(x[:4], y[:4])
    rt.set_weights(w0)
    assert math.isfinite(rt.learn_batch(x[:4], y[:4]))
    assert all(np.isfinite(v).all() for v in rt.grads().values())  # the refused batch's gradients were dropped
    rt.step(0.1)
    assert all(np.isfinite(v).all() for v in rt.get_weights().values())


# ---------------------------------------------------------------------------- resume inside an epoch


def test_save_every_resumes_inside_the_epoch_bit_identically(built, tmp_path):
    """Killed right after a --save-every checkpoint (inside epoch 1, at the end of epoch 1, inside
    epoch 2) and resumed: the final checkpoint has the uninterrupted run's bytes and the resumed
    epoch reports the whole epoch's loss and accuracy. A resume with another --batch is refused."""
    art, data, _ = built
    opts = ("train", "--train", data, "--epochs", "3", "--batch", "4", "--save-every", "2", "--seed", "3",
            "--warmup", "5", "--threads", "2", "--quiet")
    ref = tmp_path / "ref.bin"
    done = run(art.executable, *opts, "--checkpoint", ref)
    assert done.returncode == 0, done.stderr
    ref_lines = {fields(ln)["epoch"]: ln.split()[:8] for ln in done.stdout.splitlines()}
    # 24 samples in batches of 4, a checkpoint every 2 batches: saves 1, 2 inside epoch 1, save 3 at its end
    for kill_after, epoch_then in ((1, 0), (3, 1), (5, 1)):
        ck = tmp_path / f"k{kill_after}.bin"
        killed = run(art.executable, *opts, "--checkpoint", ck, env={"SPIDE_TEST_KILL_IN_SAVE": f"after:{kill_after}"})
        assert killed.returncode == -signal.SIGKILL
        raw = ck.read_bytes()
        assert struct.unpack("<II", raw[4:8] + raw[24:28]) == (2, epoch_then)
        assert struct.unpack("<I", raw[36:40])[0] == (8 * kill_after) % 24  # samples of the epoch in progress
        if kill_after == 5:  # another batch size cannot continue inside the epoch
            other = run(art.executable, *opts[:5], "--batch", "3", *opts[7:], "--checkpoint", ck, "--resume")
            assert other.returncode == 1 and "stops after sample 16 of epoch 2" in other.stderr, other.stderr
            assert ck.read_bytes() == raw
        done = run(art.executable, *opts, "--checkpoint", ck, "--resume")
        assert done.returncode == 0, done.stderr
        assert ck.read_bytes() == ref.read_bytes(), kill_after
        for ln in done.stdout.splitlines():
            assert ln.split()[:8] == ref_lines[fields(ln)["epoch"]], (kill_after, ln)
    # a format-1 checkpoint (before the position was stored) still loads, at its epoch boundary
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(to_v1(ref.read_bytes()))
    a = run(art.executable, "eval", "--test", data, "--checkpoint", ref)
    b = run(art.executable, "eval", "--test", data, "--checkpoint", v1)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    # spidec export reads both formats
    from spidec.export import _c_build_graph, _read_c_checkpoint

    g = _c_build_graph(art.out)
    t2, e2 = _read_c_checkpoint(ref, g, None)
    t1, e1 = _read_c_checkpoint(v1, g, None)
    assert e1 == e2 == 3 and all(np.array_equal(t1[k], t2[k]) for k in t1)


def test_fixed_point_online_updates_resume_inside_the_epoch_bit_identically(tmp_path):
    """Online fixed-point updates decay the weights every 64 steps of an epoch: a run resumed 30
    steps in must continue that phase (spide_resume_epoch), or its decay falls 30 steps late."""
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c", T=8, T_back=10,
                         quantize={"update": "online"})
    assert "% 64" in (art.out / "model.c").read_text()
    subprocess.run(["make", "-C", str(art.out), "train"], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    data = write_spds(tmp_path / "d.spds", rng.random((100, 64), np.float32), np.arange(100) % 10, 10)
    opts = ("train", "--train", data, "--epochs", "2", "--batch", "1", "--save-every", "10", "--quiet")
    assert run(art.executable, *opts, "--checkpoint", tmp_path / "a.bin").returncode == 0
    killed = run(art.executable, *opts, "--checkpoint", tmp_path / "b.bin", env={"SPIDE_TEST_KILL_IN_SAVE": "after:3"})
    assert killed.returncode == -signal.SIGKILL
    assert run(art.executable, *opts, "--checkpoint", tmp_path / "b.bin", "--resume").returncode == 0
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_killed_saves_leave_no_stale_temporary_files(built, tmp_path):
    """A save killed mid-write leaves CKPT.tmp<pid>; the next trainer of that checkpoint removes it
    (and only those of processes that are gone)."""
    art, data, _ = built
    ck = tmp_path / "ck.bin"
    base = ("train", "--train", data, "--epochs", "1", "--checkpoint", ck, "--quiet")
    killed = run(art.executable, *base, env={"SPIDE_TEST_KILL_IN_SAVE": "1"})
    assert killed.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.glob("ck.bin.tmp*")]
    assert len(stale) == 1
    live = tmp_path / f"ck.bin.tmp{os.getpid()}"  # a save of a process that still runs (this one)
    live.write_bytes(b"busy")
    (tmp_path / "ck.bin.tmpx").write_bytes(b"not ours")
    assert run(art.executable, *base).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.bin", "ck.bin.lock", live.name, "ck.bin.tmpx"])


# ---------------------------------------------------------------------------- readers


def _limited(mb: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    return limit


def test_readers_refuse_non_regular_and_oversized_files_unread(built, tmp_path):
    """A FIFO (used to block forever), /dev/zero (allocated until malloc failed), a folder: refused
    in one line without reading. A 1 GiB (sparse) file whose header announces 24 samples, and a
    checkpoint 1 GiB long: refused from the header and the file size, under a 256 MiB address-space
    limit (the old reader read the whole file first and ran out of memory). The same under ASan."""
    art, data, _ = built
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ck = tmp_path / "ck.bin"
    assert run(art.executable, "train", "--train", data, "--epochs", "1", "--checkpoint", ck, "--quiet").returncode == 0
    big = tmp_path / "big.spds"
    big.write_bytes(data.read_bytes())
    with open(big, "r+b") as f:
        f.truncate(1 << 30)
    bigck = tmp_path / "big.bin"
    bigck.write_bytes(ck.read_bytes())
    with open(bigck, "r+b") as f:
        f.truncate(1 << 30)
    other = tmp_path / "other.spds"  # samples of another size, 1 GiB long
    write_spds(other, np.zeros((2, 1, 28, 28)), np.zeros(2, int), 10)
    with open(other, "r+b") as f:
        f.truncate(1 << 30)
    cases = [(("train", "--train", fifo), "fifo: not a regular file (a pipe)"),
             (("eval", "--test", "/dev/zero"), "/dev/zero: not a regular file (a device)"),
             (("predict", "--data", tmp_path), "not a regular file (a folder)"),
             (("eval", "--test", data, "--checkpoint", fifo), "fifo: not a regular file (a pipe)"),
             (("eval", "--test", data, "--checkpoint", "/dev/zero"), "not a regular file (a device)"),
             (("train", "--train", data, "--checkpoint", fifo), f"--checkpoint {fifo} is not a regular file"),
             (("train", "--train", data, "--checkpoint", tmp_path, "--resume"), "is not a regular file"),
             (("train", "--train", big), f"24 samples of 64 values do not fit the file's {1 << 30} bytes"),
             (("eval", "--test", other), "samples hold 784 values, the model's input holds 64"),
             (("eval", "--test", data, "--checkpoint", bigck), f"the checkpoint holds {1 << 30} bytes, this model's")]
    for args, says in cases:
        done = run(art.executable, *args, timeout=20, preexec_fn=_limited(256))
        assert done.returncode == 1 and says in done.stderr and one_line(done.stderr), (args, done.stderr)
        sdone = run(san(art), *args, env=SAN_ENV, timeout=60)
        assert sdone.returncode == 1 and says in sdone.stderr and clean(sdone), (args, sdone.stderr)
    # truncated and crafted checkpoints of the current format: refused cleanly under the sanitizers
    raw = ck.read_bytes()
    pos = bytearray(raw)
    struct.pack_into("<II", pos, 36, 8, 9)  # 9 right of 8 samples done
    crafted = {"head": (raw[:40], "CRC mismatch"), "short": (resign(raw[:60] + raw[-4:]), "this model's needs"),
               "position": (resign(pos), "is not valid"), "version": (resign(raw[:4] + b"\x03" + raw[5:]), "version 3")}
    for name, (blob, says) in crafted.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(blob)
        done = run(san(art), "eval", "--test", data, "--checkpoint", path, env=SAN_ENV, timeout=60)
        assert done.returncode == 1 and says in done.stderr and clean(done), (name, done.stderr)
    # and the whole path of a good one: a mid-epoch save, resumed, evaluated
    sck = tmp_path / "san.bin"
    for args in (("train", "--train", data, "--epochs", "1", "--batch", "4", "--save-every", "1", "--checkpoint", sck),
                 ("train", "--train", data, "--epochs", "2", "--batch", "4", "--checkpoint", sck, "--resume"),
                 ("eval", "--test", data, "--checkpoint", sck)):
        env = {**SAN_ENV, "SPIDE_TEST_KILL_IN_SAVE": "after:3"} if "--save-every" in args else SAN_ENV
        done = run(san(art), *args, env=env, timeout=300)
        assert done.returncode in (0, -signal.SIGKILL) and clean(done), done.stderr[-3000:]


# ---------------------------------------------------------------------------- flags and locks


def test_trainer_flags_are_parsed_strictly(built, tmp_path):
    """--epochs abc used to train 0 epochs and exit 0, --lr nan/inf/-1 were accepted, --resume
    without --checkpoint was ignored, an unknown last flag read as a missing value: each is now one
    usage line naming the flag, exit 2, nothing trained."""
    art, data, _ = built
    ck = tmp_path / "ck.bin"
    cases = [(("--epochs", "abc"), "--epochs abc: use --epochs 0..1000000"),
             (("--epochs", "3x"), "--epochs 3x: use --epochs 0..1000000"),
             (("--epochs", "-1"), "--epochs -1:"), (("--batch", "0"), "--batch 0: use --batch 1.."),
             (("--batch", "99999999999"), "--batch 99999999999:"),
             (("--lr", "nan"), "--lr nan: use a finite number > 0"),
             (("--lr", "inf"), "--lr inf:"), (("--lr", "-1"), "--lr -1:"), (("--lr", "0"), "--lr 0:"),
             (("--lr", "1e31"), "--lr 1e31:"), (("--lr", "0.1x"), "--lr 0.1x:"), (("--seed", "-1"), "--seed -1:"),
             (("--seed", "1.5"), "--seed 1.5:"), (("--save-every", "-2"), "--save-every -2:"),
             (("--warmup", "x"), "--warmup x:"), (("--threads", "0"), "--threads 0:"),
             (("--resume",), "--resume needs --checkpoint FILE"),
             (("--save-every", "2"), "--save-every needs --checkpoint FILE"),
             (("--frobnicate",), "unknown option --frobnicate"), (("--frobnicate", "1"), "unknown option --frobnicate"),
             (("--checkpoint",), "--checkpoint needs a value"),
             (("--checkpoint", "--resume"), "--checkpoint needs a value")]
    for extra, says in cases:
        done = run(art.executable, "train", "--train", data, *extra)
        assert done.returncode == 2 and says in done.stderr and one_line(done.stderr), (extra, done.stderr)
        assert done.stdout == "" and not ck.exists()
    assert run(art.executable, "train", "--help").returncode == 0
    ok = run(art.executable, "train", "--train", data, "--epochs", "1", "--lr", "0.05", "--seed", "7", "--quiet")
    assert ok.returncode == 0 and ok.stdout.startswith("epoch 1 lr 0.05 ")


def test_two_trainers_on_one_checkpoint(built, tmp_path):
    """The second trainer of a checkpoint is refused in one line naming it, while the first runs;
    once the first is gone the checkpoint trains again."""
    art, data, _ = built
    ck = tmp_path / "ck.bin"
    first = subprocess.Popen([str(art.executable), "train", "--train", str(data), "--epochs", "100000",
                              "--checkpoint", str(ck), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().startswith("epoch 1 ")  # it holds the lock before it trains
        second = run(art.executable, "train", "--train", data, "--epochs", "1", "--checkpoint", ck, "--resume",
                     "--quiet")
        assert second.returncode == 1 and one_line(second.stderr), second.stderr
        assert f"{ck} is in use by another trainer" in second.stderr
        assert first.poll() is None
        first.stdout.readline()  # epoch 2 began, so epoch 1's checkpoint is on disk (it prints, then saves)
        assert run(art.executable, "eval", "--test", data, "--checkpoint", ck).returncode == 0  # readers need no lock
    finally:
        first.kill()
        first.communicate()
    done = run(art.executable, "train", "--train", data, "--epochs", "1", "--checkpoint", ck, "--quiet")
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------- builds


def test_a_model_without_a_dense_weight_builds_with_werror(tmp_path):
    """Conv synapses only (the readout a flatten and a scale): model.c used to define the unused
    transpose() and fail -Wall -Wextra -Werror. It builds (host, library, sanitizers) and trains."""
    rng = np.random.default_rng(0)
    g = Graph("conv_only")
    g.add_input("img", [1, 6, 6])
    g.add_population("c1", [3, 6, 6], bias=_u(rng, (3,), 0.2))
    g.add_population("c2", [5, 1, 1], bias=_u(rng, (5,), 0.2))
    g.add_readout("y", [5])
    g.add_synapse("img", "c1", Conv2d(_u(rng, (3, 1, 3, 3), 0.9), padding=1), name="conv1")
    g.add_synapse("c1", "c1", Conv2d(_u(rng, (3, 3, 3, 3), 0.5), padding=1), delay=1, name="rec")
    g.add_synapse("c1", "c2", Conv2d(_u(rng, (5, 3, 6, 6), 0.3)), name="down")
    g.add_synapse("c2", "y", [Flatten(), Scale(1.0)], name="cls")
    art = spidec.compile(g.validate(), target="c", out=tmp_path / "c", T=8, T_back=10)
    assert "-Werror" in (art.out / "Makefile").read_text()
    art.build(sanitize=True)
    x = np.random.default_rng(1).random((8, 1, 6, 6), np.float32)
    data = write_spds(tmp_path / "d.spds", x, np.arange(8) % 5, 5)
    for exe in (art.executable, art.out / "train-san"):
        done = run(exe, "train", "--train", data, "--epochs", "1", "--batch", "4", "--quiet", env=SAN_ENV)
        assert done.returncode == 0 and done.stdout.startswith("epoch 1 ") and clean(done), done.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
