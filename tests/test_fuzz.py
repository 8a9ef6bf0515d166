"""Bad input never crashes spidec: property-based fuzzing of the parsers and readers (only
SpidecErrors come out), byte-level fuzzing of the C program's file readers (an error exit, never
a signal), and interrupted training that resumes without losing completed epochs.

Budgets: a few thousand generated cases per Python target (hypothesis, no deadline) and a few
hundred files for the C readers, so that the whole module runs in well under a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spidec.frontends.onnx import load_onnx

import spidec
from spidec import SpidecError
from spidec.data import read_idx, read_spds, write_spds

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def only_spidec_errors(fn, *args, **kwargs):
    """Success, or a SpidecError with a message; any other exception fails the test."""
    try:
        fn(*args, **kwargs)
    except SpidecError as e:
        assert str(e)


# ------------------------------------------------------------------ the text form

def _tiny():
    rng = np.random.default_rng(0)
    g = spidec.Graph("tiny")
    g.add_input("x", [2])
    g.add_population("h", [3], bias=rng.random(3))
    g.add_readout("y", [2])
    g.add_synapse("x", "h", spidec.Dense(rng.random((3, 2))))
    g.add_synapse("h", "h", [spidec.Scale(0.5), spidec.Dense(rng.random((3, 3)))], delay=1)
    g.add_synapse("h", "y", spidec.Dense(rng.random((2, 3))))
    return spidec.passes.run(g)


# a small training graph, every tensor inline: the whole grammar in a text that parses in a millisecond
VALID = spidec.dumps(_tiny(), inline_max=10**9)[0]
TOKENS = ["spir", "1", "graph", "input", "population", "readout", "synapse", "tensors", "simulate", "couple",
          "backward", "inject", "update", "train", "schedule", "buffer", "x", "h", "->", ":", "=", "|>", "(", ")",
          "[", "]", ",", "@w", "f32", "dense", "conv2d", "IF", "LIF", "delay", "bias", "-1e9", "3", "0", '"a"',
          "#c\n", "\n", " "]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_parser_token_soup(tokens):
    only_spidec_errors(spidec.loads, " ".join(tokens))


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(0, 60), st.text(max_size=8))
def test_parser_mutations_of_a_valid_model(pos, cut, insert):
    only_spidec_errors(spidec.loads, VALID[:pos] + insert + VALID[pos + cut:])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_tensor_files_of_random_bytes(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("npz")
    (d / "m.npz").write_bytes(data)
    (d / "m.spir").write_text('tensors "m.npz"\ninput x [2]\npopulation h [2]\nsynapse s: x -> h = dense(@w)\n')
    only_spidec_errors(spidec.text.load, d / "m.spir")


# ------------------------------------------------------------------ the ONNX frontend

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPS = ["Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Conv", "AveragePool", "Flatten", "Reshape",
       "Identity", "Sigmoid", "MaxPool", "Softmax", "Concat", "Transpose", "Pad", "BatchNormalization", "Erf",
       "GlobalAveragePool", "HardSigmoid", "Neg", "Min", "Max", "Dropout", "Sum", "Shape", "Gather"]


@st.composite
def random_onnx(draw):
    """Small graphs of random ops over a [N, 4] input and a state, with random constants."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    names = ["x", "z"]
    inits, nodes = [], []
    for k in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(OPS))
        ins = [draw(st.sampled_from(names)) for _ in range(draw(st.integers(1, 3)))]
        if draw(st.booleans()):
            c = f"c{k}"
            shape = draw(st.sampled_from([(), (4,), (4, 4), (1, 4), (2, 2, 2, 2)]))
            inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), c))
            ins.append(c)
        attrs = {}
        if draw(st.booleans()):
            attrs[draw(st.sampled_from(["axis", "transB", "alpha", "kernel_shape", "pads", "strides"]))] = \
                draw(st.sampled_from([1, 0, -1, 0.5, [2, 2], [1, 1, 1, 1]]))
        out = f"t{k}"
        nodes.append(helper.make_node(op, ins, [out], name=f"n{k}", **attrs))
        names.append(out)
    outputs = [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, ["N", 4])]
    if draw(st.booleans()):
        outputs.append(helper.make_tensor_value_info(draw(st.sampled_from(names)), TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])
                                           for n in ("x", "z")], outputs, inits)
    opset = draw(st.sampled_from([9, 11, 13, 17, 20]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if draw(st.booleans()):
        helper.set_model_props(model, {"spidec.state": draw(st.sampled_from(["z:" + names[-1], "z:nope", "bad"]))})
    return model


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(random_onnx())
@pytest.mark.filterwarnings("ignore::spidec.SpidecWarning")  # ReLU and dropped Softmax warnings are expected
def test_onnx_frontend_random_graphs(model):
    only_spidec_errors(load_onnx, model)


ONNX_BYTES = (EXAMPLES / "digits_fb.onnx").read_bytes()


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(st.integers(0, len(ONNX_BYTES) - 1), st.integers(0, 2000), st.binary(max_size=16))
def test_onnx_frontend_corrupted_files(pos, cut, insert):
    only_spidec_errors(load_onnx, ONNX_BYTES[:pos] + insert + ONNX_BYTES[pos + cut:])


# ------------------------------------------------------------------ data readers

SPDS = None


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.data())
def test_dataset_reader(tmp_path_factory, data):
    global SPDS
    d = tmp_path_factory.mktemp("spds")
    if SPDS is None:
        SPDS = write_spds(d / "ok.spds", np.random.default_rng(0).random((5, 2, 3)), np.arange(5) % 3, 3).read_bytes()
    raw = data.draw(st.one_of(st.binary(max_size=200), st.builds(
        lambda p, c, b: SPDS[:p] + b + SPDS[p + c:], st.integers(0, len(SPDS)), st.integers(0, 40),
        st.binary(max_size=6))))
    (d / "f.spds").write_bytes(raw)
    only_spidec_errors(read_spds, d / "f.spds")
    (d / "f.gz").write_bytes(raw)
    only_spidec_errors(read_idx, d / "f.gz")


# ------------------------------------------------------------------ the C program's readers

needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs cc and make")


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfuzz")
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=out / "prog")
    art.build(sanitize=True)
    data = spidec.data.pack("digits", out)
    ck = out / "ck.bin"
    subprocess.run([str(art.executable), "train", "--train", str(data[1]), "--epochs", "1", "--checkpoint", str(ck)],
                   check=True, capture_output=True)
    return art, data, ck


def _mutations(raw: bytes, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = [b"", raw[:3], raw[:40], raw[: len(raw) // 2], raw[:-1], raw + b"x"]
    for _ in range(n):
        b = bytearray(raw)
        kind = rng.integers(3)
        if kind == 0:
            for i in rng.integers(0, len(b), size=rng.integers(1, 6)):
                b[i] = rng.integers(256)
        elif kind == 1:
            b = b[: rng.integers(0, len(b))]
        else:
            b = bytes(rng.integers(0, 256, size=rng.integers(0, 300), dtype=np.uint8))
        out.append(bytes(b))
    return out


@needs_cc
def test_c_readers_exit_with_an_error_never_a_crash(c_program, tmp_path):
    art, (_, test), ck = c_program
    exe = art.out / "train-san"  # under ASan and UBSan: a memory error would abort with a signal
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    cases = [(m, "data") for m in _mutations(test.read_bytes(), 120, 1)]
    cases += [(m, "ckpt") for m in _mutations(ck.read_bytes(), 120, 2)]
    for k, (blob, kind) in enumerate(cases):
        f = tmp_path / f"f{k}"
        f.write_bytes(blob)
        args = ["eval", "--test", str(f)] if kind == "data" else ["eval", "--test", str(test), "--checkpoint", str(f)]
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode in (0, 1), (kind, k, done.returncode, done.stderr[-500:])
        assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr
        if done.returncode == 1:
            assert done.stderr.startswith("error: "), done.stderr


@needs_cc
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_c_training_loop_under_valgrind(c_program, tmp_path):
    """Valgrind does not decode every -march=native instruction (AVX-512): a generic build."""
    art, (_, test), _ = c_program
    prog = tmp_path / "prog"
    shutil.copytree(art.out, prog, ignore=shutil.ignore_patterns("train", "train-san", "*.so"))
    subprocess.run(["make", "-s", "-C", str(prog), "train", "ARCH="], check=True, capture_output=True)
    x, y, _ = read_spds(test)
    small = write_spds(tmp_path / "small.spds", x[:40], y[:40], 10)
    done = subprocess.run(["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                           str(prog / "train"), "train", "--train", str(small), "--test", str(small), "--epochs", "1",
                           "--batch", "8", "--checkpoint", str(tmp_path / "v.bin")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR SUMMARY: 0 errors" in done.stderr


# ------------------------------------------------------------------ interrupted training (sim program)

torch = pytest.importorskip("torch")


def test_sim_trainer_killed_at_random_points_resumes_without_loss(tmp_path):
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=tmp_path / "sim")
    ck, log = tmp_path / "ck.pt", tmp_path / "hist.json"
    base = [sys.executable, str(art.out / "train.py"), "--data", "digits", "--epochs", "40", "--limit-train", "400",
            "--limit-test", "50", "--checkpoint", str(ck), "--log", str(log), "--quiet", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen = 0
    rng = np.random.default_rng(5)
    for _ in range(4):
        before = ck.stat().st_mtime_ns if ck.exists() else 0
        p = subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and (not ck.exists() or
                                                                   ck.stat().st_mtime_ns == before):
            time.sleep(0.02)  # wait for the next checkpoint, then kill at a random moment after it
        time.sleep(float(rng.uniform(0.0, 0.4)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if ck.exists():  # every kill leaves a loadable checkpoint of whole epochs, never fewer than before
            state = torch.load(ck, weights_only=True)
            assert state["epoch"] >= seen and len(state["history"]) == state["epoch"]
            assert [h["epoch"] for h in state["history"]] == list(range(1, state["epoch"] + 1))
            seen = state["epoch"]
    assert 0 < seen < 40  # the kills landed during training, after completed epochs
    done = subprocess.run(base, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 40 and [h["epoch"] for h in state["history"]] == list(range(1, 41))
