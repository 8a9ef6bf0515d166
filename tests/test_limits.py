"""Resource limits, names and paths (issue 18): crafted inputs that declare sizes far beyond what
they hold are refused before anything of that size is allocated (spidec.limits), tensors are read
lazily and only when referenced, names are whole identifiers of bounded length, a .spir file reads
its tensors from its own folder only, an ONNX export whose state pairing is ambiguous is refused,
and the graph's derived tables are computed once per structure (compile time linear in size: see
bench/compile_time.py for the timings)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import EXAMPLES, dense_feedback
from onnx import TensorProto, helper, numpy_helper

import spidec
from spidec import Dense, Graph, Scale, SpidecError, limits
from spidec.ir import MAX_NAME

# ---------------------------------------------------------------------------- helpers


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """The .npy v1.0 header of an array of ``shape`` (its data is whatever follows)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()  # (magic string included)


def npz(path: Path, members: dict[str, bytes | np.ndarray], big_zeros: dict[str, int] | None = None) -> Path:
    """A .npz written by hand: arrays, raw members (a header and a truncated body) and, for
    ``big_zeros`` (name -> bytes), deflated members of that many zero bytes after their header."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, v in members.items():
            if isinstance(v, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, v, allow_pickle=False)
                v = buf.getvalue()
            z.writestr(f"{name}.npy", v)
        for name, size in (big_zeros or {}).items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                f.write(npy_header((size // 4,)))
                chunk = bytes(1 << 20)
                for _ in range(size >> 20):
                    f.write(chunk)
    return path


SPIR = """spir 1
graph tiny
tensors "{npz}"

input x [2]
population h [2] bias=@h.bias
readout y [2]

synapse s: x -> h = dense(@w)
synapse fb: h -> h delay=1 = scale(0.5)
synapse r: h -> y = dense([[1.0, 0.0], [0.0, 1.0]])
"""


def tiny_spir(folder: Path, npz_name: str = "m.npz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spir = folder / "m.spir"
    spir.write_text(SPIR.format(npz=npz_name))
    return spir


W = np.eye(2, dtype=np.float32) * 0.5
B = np.zeros(2, np.float32)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def onnx_model(nodes, inits, inputs, outputs, name="crafted", opset=17):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


CLIP = {"lo": np.array(0, np.float32), "hi": np.array(1, np.float32)}


# ---------------------------------------------------------------------------- .npz tensors


def test_npz_arrays_are_read_lazily_and_only_when_referenced(tmp_path):
    """An array the model does not refer to is never read: here one whose body is cut short (an
    eager reader fails on it) and one of 256 MiB of deflated zeros (an eager reader holds it)."""
    folder = tmp_path / "m"
    spir = tiny_spir(folder)
    npz(folder / "m.npz", {"w": W, "h.bias": B, "broken": npy_header((1000,)) + b"\0" * 10},
        big_zeros={"unused": 256 << 20})
    assert (folder / "m.npz").stat().st_size < 2 << 20
    code = ("import resource, sys, spidec\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"g = spidec.load({str(spir)!r})\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(after - before, g.num_parameters())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_kib, params = map(int, done.stdout.split())
    assert params == 4 + 2 + 4
    assert grown_kib < 64 * 1024  # far below the 256 MiB an eager read of 'unused' costs


def test_npz_header_declaring_a_huge_array_is_refused_before_reading(tmp_path):
    folder = tmp_path / "m"
    spir = tiny_spir(folder)
    # 16 GiB declared, 10 bytes present: reading would fail as truncated; the header alone refuses it
    npz(folder / "m.npz", {"w": npy_header((65536, 65536)) + b"\0" * 10, "h.bias": B})
    with pytest.raises(SpidecError) as e:
        spidec.load(spir)
    text = one_line(e)
    assert "tensor @w in m.npz (shape [65536, 65536]) has 4,294,967,296 elements, more than the limit" in text
    assert e.value.line == 9 and "SPIDEC_MAX_PARAMETERS" in text


def test_npz_tensor_of_another_type_is_refused_before_reading(tmp_path):
    folder = tmp_path / "m"
    spir = tiny_spir(folder)
    npz(folder / "m.npz", {"w": np.zeros((2, 2), np.int64), "h.bias": B})
    with pytest.raises(SpidecError, match=r"tensor @w in m.npz has dtype int64; spidec tensors are floats") as e:
        spidec.load(spir)
    assert e.value.line == 9


def test_inspect_cli_refuses_a_crafted_npz_in_one_line(tmp_path, run_cli):
    folder = tmp_path / "m"
    spir = tiny_spir(folder)
    npz(folder / "m.npz", {"w": W, "h.bias": npy_header((1 << 40,)) + b"\0"})
    code, _, err = run_cli("inspect", str(spir))
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "tensor @h.bias in m.npz (shape [1099511627776])" in err and "more than the limit" in err
    npz(folder / "m.npz", {"w": W, "h.bias": B})  # the same model with honest tensors inspects
    code, _, err = run_cli("inspect", str(spir), "--no-text")
    assert code == 0, err


# ---------------------------------------------------------------------------- the limits


def test_population_beyond_the_neuron_limit_is_refused_at_its_line(tmp_path):
    spir = tmp_path / "wide.spir"
    spir.write_text("spir 1\ngraph wide\n\ninput x [4]\npopulation p [20000000]\nreadout y [4]\n\n"
                    "synapse a: x -> p = zero([20000000])\nsynapse r: p -> y = zero([4])\n")
    assert spir.stat().st_size < 1024
    with pytest.raises(SpidecError) as e:
        spidec.load(spir)
    text = one_line(e)
    assert e.value.line == 5
    assert "population 'p' of shape [20000000] has 20,000,000 neurons, more than the limit of 16,777,216" in text


def test_limits_are_overridable_by_environment_and_api(monkeypatch):
    g = dense_feedback()
    n = sum(int(np.prod(node.shape)) for node in g.nodes)
    with limits.override(neurons=n - 1):
        with pytest.raises(SpidecError, match=r"model 'dense_fb' \(all its nodes together\) has .* neurons"):
            g.validate()
    g.validate()  # the override ended with its block
    monkeypatch.setenv("SPIDEC_MAX_PARAMETERS", str(g.num_parameters() - 1))
    with pytest.raises(SpidecError, match=r"all its tensors together\) has .* elements, more than the limit"):
        g.validate()
    with pytest.raises(SpidecError, match=r"SPIDEC_MAX_PARAMETERS='lots' is not a positive integer"):
        monkeypatch.setenv("SPIDEC_MAX_PARAMETERS", "lots")
        g.validate()
    monkeypatch.setenv("SPIDEC_MAX_PARAMETERS", "1_000_000_000")
    assert limits.max_parameters() == 10**9 and g.validate()
    monkeypatch.setenv("SPIDEC_MAX_NEURONS", "100")
    with pytest.raises(SpidecError, match="input 'x' of shape \\[10, 11\\] has 110 neurons"):
        Graph().add_input("x", (10, 11))


def test_the_paper_models_fit_the_default_limits():
    """The defaults are generous: the authors' largest models are far inside them."""
    sys.path.insert(0, str(EXAMPLES))
    from models import PAPER

    torch.manual_seed(0)
    for name in ("cifar10_alexnetf", "cifar100_cifarnetf", "dvs_convnetf"):
        cls, s = PAPER[name]
        g = spidec.from_torch(cls(classes=s["classes"]).eval(), name=name)
        assert g.num_parameters() < limits.max_parameters() // 16
        assert sum(int(np.prod(n.shape)) for n in g.nodes) < limits.max_neurons() // 16


def test_c_target_refuses_static_arrays_past_2_gib_before_emitting(tmp_path, monkeypatch):
    """A 40-million neuron population is fine for the sim target (with the neuron limit raised)
    but would not link as a C program: the C backend refuses it, naming it, and writes nothing."""
    monkeypatch.setenv("SPIDEC_MAX_NEURONS", str(10**8))
    g = Graph("wide")
    g.add_input("x", (40, 1000, 1000))
    g.add_population("p", (40, 1000, 1000))
    g.add_population("q", (40,))
    g.add_readout("y", (4,))
    g.add_synapse("x", "p", Scale(0.5), name="a")
    g.add_synapse("p", "p", Scale(0.5), delay=1, name="fb")
    g.add_synapse("p", "q", [spidec.AvgPool2d((1000, 1000)), spidec.Flatten()], name="pool")
    g.add_synapse("q", "y", Dense(np.full((4, 40), 0.1, np.float32)), name="o")
    out = tmp_path / "c"
    with pytest.raises(SpidecError) as e:
        spidec.compile(g.validate(), target="c", out=out, T=4, T_back=4)
    text = one_line(e)
    assert "static arrays (per-thread state) would take" in text and "more than the 2 GiB" in text
    assert "the largest population is 'p' with 40,000,000 neurons" in text and "--target sim" in text
    assert not out.exists()


def test_c_static_size_counts_what_the_plan_declares(tmp_path):
    from spidec.backends.c import STATIC_LIMIT, static_bytes

    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "c", T=4, T_back=4)
    tls, other = static_bytes((art.out / "model.c").read_text(), (art.out / "weights.c").read_text())
    plan = sum(b.nbytes for b in art.graph.program.buffers)
    assert plan <= tls < plan + 4096  # the buffer plan is the thread-local state
    params = art.graph.num_parameters()
    assert 4 * params < other < STATIC_LIMIT  # weights and their shared copies


# ---------------------------------------------------------------------------- ONNX shapes before numpy


def _constant_of_shape():
    return onnx_model([helper.make_node("ConstantOfShape", ["shp"], ["c"],
                                        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
                       helper.make_node("Gemm", ["x", "w"], ["y0"], transB=1),
                       helper.make_node("Add", ["y0", "c"], ["y1"]),
                       helper.make_node("Clip", ["y1", "lo", "hi"], ["z_next"]),
                       helper.make_node("Gemm", ["z_next", "w2"], ["logits"], transB=1)],
                      {"shp": np.array([100000, 100000], np.int64), "w": np.zeros((4, 4), np.float32),
                       "w2": np.zeros((3, 4), np.float32), **CLIP}, [("x", [1, 4])], [("logits", [1, 3])])


def _const_binary(op: str):
    """A constant [n, 1] (op) [1, n]: n^2 values from 2n (MatMul: an outer product)."""
    n = 100000
    return onnx_model([helper.make_node(op, ["a", "b"], ["c"]),
                       helper.make_node("Gemm", ["x", "w"], ["y0"], transB=1),
                       helper.make_node("Add", ["y0", "c"], ["y1"]),
                       helper.make_node("Clip", ["y1", "lo", "hi"], ["logits"])],
                      {"a": np.ones((n, 1), np.float32), "b": np.ones((1, n), np.float32),
                       "w": np.zeros((4, 4), np.float32), **CLIP}, [("x", [1, 4])], [("logits", [1, 4])])


def _gather():
    return onnx_model([helper.make_node("Gather", ["d", "i"], ["c"], axis=0),
                       helper.make_node("Gemm", ["x", "w"], ["y0"], transB=1),
                       helper.make_node("Add", ["y0", "c"], ["y1"]),
                       helper.make_node("Clip", ["y1", "lo", "hi"], ["logits"])],
                      {"d": np.ones((2, 100000), np.float32), "i": np.zeros(100000, np.int64),
                       "w": np.zeros((4, 4), np.float32), **CLIP}, [("x", [1, 4])], [("logits", [1, 4])])


def _conv(pad: int):
    return onnx_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4),
                       helper.make_node("Clip", ["y", "lo", "hi"], ["h"]),
                       helper.make_node("GlobalAveragePool", ["h"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["logits"])],
                      {"w": np.full((2, 1, 3, 3), 0.1, np.float32), "b": np.full(2, 0.1, np.float32), **CLIP},
                      [("x", [1, 1, 4, 4])], [("logits", [1, 2])])


@pytest.mark.parametrize("case, model, message", [
    ("ConstantOfShape", _constant_of_shape, r"node 'c' \(ConstantOfShape\): its constant result of shape "
     r"\[100000, 100000\] has 10,000,000,000 elements"),
    ("MatMul", lambda: _const_binary("MatMul"), r"\(MatMul\): its constant result of shape \[100000, 100000\]"),
    ("Add", lambda: _const_binary("Add"), r"\(Add\): its constant result of shape \[100000, 100000\]"),
    ("Mul", lambda: _const_binary("Mul"), r"\(Mul\): its constant result of shape \[100000, 100000\]"),
    ("Gather", _gather, r"\(Gather\): its constant result of shape \[100000, 100000\]"),
    ("Conv pads=1e9", lambda: _conv(10**9), r"node 'y' \(Conv\): its output of shape \[2, 2000000002, 2000000002\] "
     r"has 8,000,000,016,000,000,008 neurons"),
    ("Conv pads=5000", lambda: _conv(5000), r"\(Conv\): its output of shape \[2, 10002, 10002\] has 200,080,008 "
     r"neurons"),
])
def test_onnx_sizes_are_checked_before_numpy_allocates(case, model, message, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model(), str(path))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(SpidecError, match=message) as e:  # (not a MemoryError, not gigabytes touched)
        spidec.load(path)
    assert "more than the limit" in one_line(e)


@pytest.mark.parametrize("pad", [1, 5000])
def test_nir_conv_output_is_checked_before_numpy_allocates(pad):
    nir = pytest.importorskip("nir")
    n = 4 + 2 * pad - 2
    conv = nir.Conv2d(input_shape=(4, 4), weight=np.full((2, 1, 3, 3), 0.1, np.float32), stride=1, padding=pad,
                      dilation=1, groups=1, bias=np.array([0.1, 0.2], np.float32))
    neuron = nir.IF(r=np.array(1e3), v_threshold=np.array(1.0), v_reset=np.array(0.0))
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 4, 4])}), "conv": conv, "a": neuron,
             "output": nir.Output(output_type={"output": np.array([2, n, n])})}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "conv"), ("conv", "a"), ("a", "output")], type_check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pad == 1:
            assert spidec.from_nir(g, dt=1e-3).populations[0].shape == (2, 4, 4)
            return
        with pytest.raises(SpidecError, match=r"node 'conv' \(Conv2d\): its output of shape \[2, 10002, 10002\] has "
                           r"200,080,008 neurons, more than the limit") as e:
            spidec.from_nir(g, dt=1e-3)  # (its bias alone would be 800 MB broadcast to that shape)
        one_line(e)


def test_onnx_conv_with_ordinary_pads_still_loads(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv(1), str(path))
    g = spidec.load(path)
    assert g.populations[0].shape == (2, 4, 4)


# ---------------------------------------------------------------------------- names


def test_names_are_whole_identifiers_of_bounded_length():
    with pytest.raises(SpidecError, match=r"graph name 'net\\n' is not an identifier") as e:
        Graph("net\n")
    one_line(e)
    g = Graph("n" * MAX_NAME)  # the longest name
    with pytest.raises(SpidecError, match=f"has 300 characters; names have at most {MAX_NAME}") as e:
        Graph("a" * 300)
    assert len(str(e.value)) < 200
    with pytest.raises(SpidecError, match="is not an identifier"):
        g.add_input("x\n", (2,))
    with pytest.raises(SpidecError, match="has 129 characters"):
        g.add_population("p" * 129, (2,))
    # the default synapse name of two long nodes stays a valid name
    g.add_input("i" * MAX_NAME, (2,))
    g.add_population("h" * MAX_NAME, (2,))
    name = g.add_synapse("i" * MAX_NAME, "h" * MAX_NAME, Scale(1.0))
    assert len(name) <= MAX_NAME and name in g


def test_text_form_quotes_a_name_with_a_newline():
    from spidec.text import NAME_RE_TEXT

    assert NAME_RE_TEXT.match("a") and not NAME_RE_TEXT.match("a\n")


def test_onnx_long_node_names_become_short_ir_names(tmp_path):
    long = "/" + "block_" * 60 + "/Clip"
    m = onnx_model([helper.make_node("Gemm", ["x", "w"], ["y0"], transB=1),
                    helper.make_node("Clip", ["y0", "lo", "hi"], ["h"], name=long),
                    helper.make_node("Gemm", ["h", "w2"], ["logits"], transB=1)],
                   {"w": np.full((4, 4), 0.1, np.float32), "w2": np.full((3, 4), 0.1, np.float32), **CLIP},
                   [("x", [1, 4])], [("logits", [1, 3])], name="g" * 400)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    g = spidec.load(path)
    assert len(g.name) <= MAX_NAME and all(len(n.name) <= MAX_NAME for n in g.nodes)
    assert g.populations[0].name.startswith("block_block_")
    assert spidec.loads(*spidec.dumps(g)) == g


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs cc and make")
def test_c_library_name_of_the_longest_graph_name_builds_and_runs(tmp_path):
    g = spidec.load(EXAMPLES / "digits_fb.spir")
    long = "m" * MAX_NAME
    g2 = Graph(long)
    for node in g.nodes:
        g2.add(node)
    for e in g.synapses():
        g2.add_synapse(e.src, e.dst, e.synapse.ops, delay=e.synapse.delay, name=e.name)
    art = spidec.compile(g2.validate(), target="c", out=tmp_path / "c", T=4, T_back=4)
    rt = art.build()
    libs = list(art.out.glob("lib*.so"))
    assert len(libs) == 1 and len(libs[0].name) <= 70 and libs[0].name.startswith("libmmmm")
    x = np.random.default_rng(0).random((3, 64), np.float32)
    assert rt.forward(x).shape == (3, 10)
    done = subprocess.run([str(art.out / "train"), "info"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and long in done.stdout + done.stderr


# ---------------------------------------------------------------------------- .spir tensors paths


@pytest.mark.parametrize("where", ["../outside.npz", "ABS", "link.npz", "sub/../../outside.npz"])
def test_spir_tensors_stay_in_the_models_folder(tmp_path, where):
    outside = npz(tmp_path / "outside.npz", {"w": W, "h.bias": B})  # readable: only the path refuses it
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    if where == "ABS":
        where = str(outside)
    if where == "link.npz":
        os.symlink(outside, folder / "link.npz")
    spir = tiny_spir(folder, json.loads(json.dumps(where)))
    with pytest.raises(SpidecError, match="lies outside the model's folder") as e:
        spidec.load(spir)
    assert e.value.line == 3 and "\n" not in str(e.value)


def test_spir_tensors_path_that_cannot_be_resolved_is_one_line(tmp_path, run_cli):
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink("loop2.npz", folder / "loop1.npz")
    os.symlink("loop1.npz", folder / "loop2.npz")
    for name, why in (("a\\u0000b.npz", "embedded null byte"), ("loop1.npz", "loop")):
        code, _, err = run_cli("inspect", str(tiny_spir(folder, name)), "--no-text")
        assert code != 0 and "is not a usable path" in err and why in err.lower()
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_spir_tensors_inside_the_folder_still_load(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    npz(folder / "sub" / "t.npz", {"w": W, "h.bias": B})
    os.symlink(folder / "sub" / "t.npz", folder / "m.npz")  # a link that stays inside
    for name in ("sub/t.npz", "m.npz", "sub/../m.npz"):
        g = spidec.load(tiny_spir(folder, name))
        assert np.array_equal(g.tensor("s.weight"), W)


# ---------------------------------------------------------------------------- ONNX state pairing


def _export_without_names(tmp_path) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from export import build

    path = tmp_path / "noname.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build("digits_fb"), (torch.rand(2, 64), torch.rand(2, 128)), str(path), dynamo=False)
    return path


def test_onnx_export_without_names_is_refused_not_read_without_feedback(tmp_path, run_cli):
    path = _export_without_names(tmp_path)
    proto = onnx.load(str(path))
    x, z = (i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer})
    z_next, _ = (o.name for o in proto.graph.output)
    assert "z" not in (x, z) and z_next != "z_next"  # the exporter's own names
    with pytest.raises(SpidecError, match=f"the state pairing is ambiguous: input '{z}' and output '{z_next}'") as e:
        spidec.load(path)
    assert "input_names" in one_line(e)
    code, out, err = run_cli("inspect", str(path), "--no-text")
    assert code != 0 and "state pairing is ambiguous" in err and len(err.strip().splitlines()) == 1
    # paired explicitly (Python, or the metadata with the exporter's '::' names): one feedback loop
    g = spidec.load(path, state={z: z_next})
    assert [i.name for i in g.inputs] == [x.replace("::", "_")] and len(g.readouts) == 1
    assert sum(e.synapse.delay for e in g.synapses()) == 1
    helper.set_model_props(proto, {"spidec.state": f"{z}:{z_next}"})
    onnx.save(proto, str(path))
    assert spidec.load(path).canonical() == g.canonical()
    # said to have no state: two data inputs, as before
    code, out, err = run_cli("inspect", str(_export_without_names(tmp_path)), "--no-text", "--state", "none")
    assert code == 0, err
    assert "2 inputs" in out


def test_onnx_named_export_still_pairs_by_convention():
    g = spidec.load(EXAMPLES / "digits_fb.onnx")
    assert [i.name for i in g.inputs] == ["x"] and sum(e.synapse.delay for e in g.synapses()) == 1


# ---------------------------------------------------------------------------- derived tables, once


def _chain(n: int) -> Graph:
    g = Graph("chain")
    g.add_input("x", (3,))
    prev = "x"
    for k in range(n):
        g.add_population(f"p{k}", (3,), bias=np.zeros(3, np.float32))
        g.add_synapse(prev, f"p{k}", Dense(np.full((3, 3), 0.1, np.float32)), name=f"fc{k}")
        prev = f"p{k}"
    g.add_synapse(prev, "p0", Dense(np.full((3, 3), 0.1, np.float32)), delay=1, name="fb")
    g.add_readout("y", (2,))
    g.add_synapse(prev, "y", Dense(np.full((2, 3), 0.1, np.float32)), name="out")
    return g


def test_tensor_slots_are_computed_once_per_structure(monkeypatch):
    calls = []
    compute = Graph._compute_slots
    monkeypatch.setattr(Graph, "_compute_slots", lambda self: calls.append(1) or compute(self))
    g = _chain(40)
    params = g.parameters()
    assert len(params) == 2 * 40 + 2 and len(calls) == 1
    for name in params:
        g.tensor(name)
    g.num_parameters()
    g.validate()
    assert len(calls) == 1  # not once per tensor() call: that made compiling quadratic
    # a change of structure is seen
    g.replace_synapse("out", spidec.Synapse((Dense(np.zeros((2, 3), np.float32)), Dense(np.eye(2, dtype=np.float32)))))
    assert {"out.0.weight", "out.1.weight"} <= set(g.tensor_slots()) and len(calls) == 2
    g.remove_synapse("out")
    assert not any(n.startswith("out.") for n in g.tensor_slots())
    g.add_synapse("p39", "y", Dense(np.ones((2, 3), np.float32)), name="out2")
    assert np.array_equal(g.tensor("out2.weight"), np.ones((2, 3)))
    h = g.copy()
    h.replace_node(spidec.Population("p0", (3,), bias=None))
    assert "p0.bias" in g.tensor_slots() and "p0.bias" not in h.tensor_slots()


def test_in_and_out_synapses_keep_text_order():
    g = Graph()
    for n in ("a", "b"):
        g.add_input(n, (2,))
    g.add_population("c", (2,))
    g.add_synapse("a", "c", Scale(1.0), name="s1")
    g.add_synapse("b", "c", Scale(1.0), name="s2")
    g.add_synapse("a", "c", Scale(2.0), name="s3")
    g.add_synapse("c", "c", Scale(0.5), delay=1, name="s4")
    assert [e.name for e in g.in_synapses("c")] == ["s1", "s2", "s3", "s4"]
    assert [e.name for e in g.out_synapses("a")] == ["s1", "s3"]
    assert [e.name for e in g.out_synapses("c")] == ["s4"] and g.in_synapses("nope") == []
    assert [e.name for e in g.in_synapses("c")] == [e.name for e in g.synapses() if e.dst == "c"]


def test_compile_time_bench_runs(tmp_path):
    """bench/compile_time.py (the timing table lives there, not in tests) runs on a short chain."""
    out = tmp_path / "ct.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "compile_time.py"),
                           "--layers", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["layers"], r["target"]) for r in rows} == {(3, "sim"), (3, "c"), (3, "text")}
