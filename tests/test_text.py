"""The text form: parse(print(g)) == g exactly, files, and errors with line, column and what was
expected."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAPHS, conv_feedback, dense_feedback
from hypothesis import given, settings
from hypothesis import strategies as st

import spidec
from spidec import (
    AvgPool2d,
    Conv2d,
    ConvTranspose2d,
    Dense,
    Flatten,
    Graph,
    Neuron,
    Pad,
    Reshape,
    Scale,
    SpidecError,
    Zero,
    dumps,
    loads,
)
from spidec.text import load, save

# ---------------------------------------------------------------- random graphs

DTYPES = [np.float64, np.float32, np.float16]


@st.composite
def random_graph(draw):
    """A valid random graph: dense and conv populations, op chains, feedback, readouts."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from(DTYPES))

    def t(*shape):
        return rng.standard_normal(shape).astype(dtype)

    g = Graph(draw(st.sampled_from(["model", "net_2", "A"])))
    n_in = draw(st.integers(1, 2))
    nodes: list[tuple[str, tuple[int, ...]]] = []
    for i in range(n_in):
        shape = draw(st.sampled_from([(3,), (5,), (2, 4, 4)]))
        g.add_input(f"in{i}", shape)
        nodes.append((f"in{i}", shape))

    def chain(src_shape, dst_shape):
        """Ops from src_shape to dst_shape, chosen among several routes."""
        route = draw(st.sampled_from(["dense", "scaled", "conv", "convT", "pool", "pad", "zero"]))
        ops = []
        if route == "convT" and src_shape == (3, 2, 2) and dst_shape == (2, 4, 4):
            return [ConvTranspose2d(t(3, 2, 3, 3), 2, 1, 1)]
        if route == "conv" and len(src_shape) == 3 and len(dst_shape) == 3 and dst_shape[1:] == src_shape[1:]:
            return [Conv2d(t(dst_shape[0], src_shape[0], 3, 3), 1, 1, draw(st.booleans()))]
        if route == "pool" and len(src_shape) == 3 and src_shape[1] >= 2:
            ops.append(AvgPool2d(2, padding=draw(st.integers(0, 1)), count_include_pad=draw(st.booleans())))
            src_shape = ops[-1].shape_out(src_shape)
        if route == "pad" and len(src_shape) == 3:
            ops.append(Pad(((0, 0), (1, 0), (0, 2))))
            src_shape = ops[-1].shape_out(src_shape)
        if route == "zero":
            return [Zero(dst_shape)]
        if len(src_shape) > 1:
            ops.append(Flatten())
        n_src = int(np.prod(src_shape))
        if route == "scaled":
            ops.append(Scale(float(rng.uniform(-2, 2))) if draw(st.booleans()) else Scale(t(n_src)))
        ops.append(Dense(t(int(np.prod(dst_shape)), n_src), trainable=draw(st.booleans())))
        if len(dst_shape) > 1:
            ops.append(Reshape(dst_shape))
        return ops

    n_pop = draw(st.integers(1, 4))
    pops = []
    for k in range(n_pop):
        shape = draw(st.sampled_from([(4,), (6,), (2, 4, 4), (3, 2, 2)]))
        neuron = draw(st.sampled_from([Neuron(), Neuron("IF", vth=0.5), Neuron("LIF", 1.0, -0.5, 0.875)]))
        bias_kind = draw(st.sampled_from(["none", "full", "channel"]))
        bias = None if bias_kind == "none" else (
            t(shape[0]) if bias_kind == "channel" and len(shape) == 3 else t(*shape))
        name = f"p{k}"
        g.add_population(name, shape, neuron, bias)
        src, src_shape = nodes[draw(st.integers(0, len(nodes) - 1))]
        g.add_synapse(src, name, chain(src_shape, shape))
        nodes.append((name, shape))
        pops.append((name, shape))
    for _ in range(draw(st.integers(0, 3))):  # feedback edges (any direction, delayed)
        (a, sa), (b, sb) = draw(st.sampled_from(pops)), draw(st.sampled_from(pops))
        g.add_synapse(a, b, chain(sa, sb), delay=1)
    for r in range(draw(st.integers(0, 2))):
        src, s = draw(st.sampled_from(pops))
        g.add_readout(f"out{r}", (3,), t(3) if draw(st.booleans()) else None,
                      draw(st.sampled_from(["cross_entropy", "mse"])))
        g.add_synapse(src, f"out{r}", chain(s, (3,)))
    return g.validate()


@settings(max_examples=150, deadline=None)
@given(random_graph(), st.sampled_from([0, 8, 10**9]))
def test_parse_print_roundtrip_random_graphs(g, inline_max):
    text, tensors = dumps(g, inline_max=inline_max)
    g2 = loads(text, tensors)
    assert g2 == g
    assert all(g2.tensor(n).dtype == g.tensor(n).dtype for n in g.parameters(False))
    assert dumps(g2, inline_max=inline_max)[0] == text  # printing is deterministic


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_roundtrip_through_files(tmp_path, name):
    g = GRAPHS[name]()
    path = save(g, tmp_path / f"{name}.spir")
    assert path.with_suffix(".npz").exists()
    assert load(path) == g
    assert spidec.load(path) == g


def test_examples_load_and_roundtrip(examples_dir):
    for path in sorted(examples_dir.glob("*.spir")):
        g = load(path)
        assert loads(*dumps(g)) == g
        assert g.synapses() and any(e.synapse.delay for e in g.synapses()), "examples have feedback"


def test_inline_tensors_are_exact():
    g = Graph("tiny")
    g.add_input("x", [3])
    vals = np.array([0.1, 1 / 3, -2.5e-8], dtype=np.float32)
    g.add_population("h", [3], bias=vals)
    g.add_synapse("x", "h", Dense(np.array([[0.1, 0.2, 0.3]] * 3)))
    text, tensors = dumps(g, inline_max=100)
    assert tensors == {} and "f32[" in text and "@" not in text.split("graph tiny")[1]
    assert loads(text) == g


def test_comments_and_free_whitespace():
    text = """
    # a comment line
    spir 1  graph g   input x [2]   # trailing comment
    population h [2]
        neuron = IF( vth = 1.0 , u_rest = -1.0 )
    synapse s : x -> h = scale(2.0) |> pad([[0, 0]])
    """
    g = loads(text)
    assert [n.name for n in g.nodes] == ["x", "h"] and g.synapse("s").synapse.ops[0] == Scale(2.0)


def test_keywords_are_fine_as_names():
    text = """input input [2]
    population population [2]
    readout synapse [2] loss=mse
    synapse readout: input -> population = dense(f64[[1.0, 0.0], [0.0, 1.0]])
    synapse graph: population -> synapse = scale(1.0)
    """
    g = loads(text)
    assert g.synapse("graph").dst == "synapse" and g.node("synapse").loss == "mse"


def test_defaults_when_options_are_omitted():
    g = loads("input x [1]\npopulation h [1]\nsynapse s: x -> h = dense([[2.0]])")
    assert g.node("h").neuron == Neuron() and g.node("h").bias is None
    assert g.synapse("s").synapse.ops[0] == Dense(np.array([[2.0]]))


def test_tensor_sidecar_named_relative_to_the_file(tmp_path):
    g = conv_feedback()
    save(g, tmp_path / "sub" / "m.spir")
    text = (tmp_path / "sub" / "m.spir").read_text()
    assert 'tensors "m.npz"' in text
    assert loads(text, base_dir=tmp_path / "sub") == g


# ---------------------------------------------------------------- errors

def one_error(text: str, tensors=None) -> SpidecError:
    with pytest.raises(SpidecError) as e:
        loads(text, tensors, source="m.spir")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("m.spir:")
    return e.value


@pytest.mark.parametrize(
    "text, line, column, words",
    [
        ("input x [2]\npopulation h [2]\nsynapse s: x h = scale(1.0)", 3, 14, ["'->'"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = scale(1.0", None, None, ["end of file", "')'"]),
        ("input x [2\n", None, None, ["end of file", "']'"]),
        ("input x [2]\npopulation h [2] $", 2, 18, ["unexpected character '$'"]),
        ("input x [2]\nneurons h [2]", 2, 1, ["unexpected 'neurons'", "'population'"]),
        ("input x [2]\npopulation h [2] bias=@", 2, 23, ["unexpected character '@'"]),
        ("input x [2]\npopulation h [2] bias", None, None, ["'='"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = scale(1.0) |>", None, None, ["a name"]),
    ],
)
def test_syntax_errors_carry_line_column_and_expected(text, line, column, words):
    e = one_error(text)
    if line is not None:
        assert (e.line, e.column) == (line, column), str(e)
    else:
        assert e.line is not None and e.column is not None
    for w in words:
        assert w in str(e), str(e)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = conv3d(1)", 3, ["unknown op 'conv3d'", "dense"]),
        ("input x [2]\npopulation h [2] color=1\nsynapse s: x -> h = scale(1.0)", 2,
         ["no option 'color'", "neuron, bias"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> k = scale(1.0)", 3, ["'k', which is not a declared node"]),
        ("input x [2]\ninput x [3]", 2, ["'x' is declared twice (first on line 1)"]),
        ("spir 2\ninput x [2]", 1, ["spir version 2 is not supported"]),
        ("input x [2]\npopulation h [2] neuron=HH()\nsynapse s: x -> h = scale(1.0)", 2, ["IF(...) or LIF(...)"]),
        ("input x [2]\npopulation h [2] neuron=IF(vth=-1)\nsynapse s: x -> h = scale(1.0)", 2, ["positive"]),
        ("input x [0]", 1, ["positive sizes"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h delay=2 = scale(1.0)", 3, ["delay must be 0 or 1"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = conv2d(stride=1)", 3, ["needs its argument 'weight'"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = dense([[1.0, 2.0], [3.0]])", 3, ["rectangular"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = dense(i8[[1, 2], [3, 4]])", 3, ["unknown tensor type"]),
        ("input x [2]\npopulation h [2]\nsynapse s: x -> h = avgpool2d(2, strid=1)", 3,
         ["no argument 'strid'", "kernel, stride, padding, count_include_pad"]),
    ],
)
def test_semantic_errors_name_the_line_and_the_fix(text, line, words):
    e = one_error(text)
    assert e.line == line, str(e)
    for w in words:
        assert w in str(e), str(e)


def test_missing_tensor_is_named_with_its_line():
    text = "input x [2]\npopulation h [2] bias=@h.bias\nsynapse s: x -> h = dense(@s.weight)"
    e = one_error(text, {"h.bias": np.zeros(2)})
    assert e.line == 3 and "@s.weight" in str(e) and "does not contain" in str(e)
    e = one_error(text)
    assert e.line == 2 and "no tensors are given" in str(e) and 'tensors "model.npz"' in str(e)


def test_wrong_tensor_shape_is_one_clear_error_on_the_right_line():
    text = "input x [2]\npopulation h [3]\n\nsynapse fc: x -> h = dense(@w)"
    e = one_error(text, {"w": np.zeros((3, 5))})
    assert e.line == 4 and e.node == "fc" and "weight [3, 5] expects input shape [5], got [2]" in str(e)
    e = one_error("input x [2]\npopulation h [3] bias=@b\nsynapse fc: x -> h = dense(@w)",
                  {"w": np.zeros((3, 2)), "b": np.zeros(4)})
    assert e.line == 2 and "bias of 'h' has shape [4], expected [3]" in str(e)


def test_missing_and_corrupt_tensor_files(tmp_path):
    spir = tmp_path / "m.spir"
    spir.write_text('tensors "m.npz"\ninput x [2]\npopulation h [2]\nsynapse s: x -> h = dense(@w)\n')
    with pytest.raises(SpidecError, match=r"m.spir:1:1: tensors file .*m.npz' not found"):
        load(spir)
    (tmp_path / "m.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(SpidecError, match=r"is not a readable \.npz"):
        load(spir)
    np.savez(tmp_path / "m.npz", w=np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(SpidecError, match="dtype int32"):
        load(spir)
    with pytest.raises(SpidecError, match="not found"):
        load(tmp_path / "absent.spir")


def test_save_leaves_no_temporary_files(tmp_path):
    save(conv_feedback(), tmp_path / "m.spir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.spir"]


def test_step_program_field_names_are_no_statement_keywords():
    """A record field printed as a statement keyword (couple=, update=...) would not parse."""
    import re
    from dataclasses import fields
    from pathlib import Path

    from spidec.program import CALLS, RECORDS, TEXT_NAMES

    grammar = (Path(spidec.__file__).with_name("spir.lark")).read_text()
    keywords = set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', grammar))
    assert {"couple", "update", "readout", "lower"} <= keywords
    for cls in {*RECORDS.values(), *CALLS.values()}:
        for f in fields(cls):
            assert TEXT_NAMES.get(f.name, f.name) not in keywords, (cls.__name__, f.name)


def test_a_stale_step_program_is_refused(tmp_path):
    """Editing the training graph of a lowered .spir without lowering again is caught."""
    g = spidec.passes.run(conv_feedback())
    path = tmp_path / "m.spir"
    save(g, path)
    assert load(path) == g
    text = path.read_text()
    path.write_text(text.replace("train T_back=100", "train T_back=50"))
    with pytest.raises(SpidecError, match="lowered from another training graph"):
        load(path)
    path.write_text(text.replace("kernel=conv ", "kernel=dense ", 1))
    with pytest.raises(SpidecError, match="chains do not match"):
        load(path)


def test_training_graphs_saved_before_the_step_program_still_load(tmp_path):
    """Older .spir files carry 'buffer' statements (the schedule's buffers, now the step program's
    plan): they are read and ignored, and compile lowers the graph again."""
    g = spidec.passes.schedule(spidec.passes.spide(spidec.passes.spiking(conv_feedback())))
    path = tmp_path / "old.spir"
    save(g, path)
    text = path.read_text().replace(
        "schedule forward_order", 'buffer c1_u stage=forward shape=[3, 6, 6] what="membrane potential"\nschedule '
        "forward_order", 1)
    assert "buffer c1_u" in text
    path.write_text(text)
    old = load(path)
    assert old == g and old.program is None
    assert spidec.passes.lower(old).program == spidec.passes.run(conv_feedback()).program


def test_edited_program_headers_buffers_and_scales_are_refused(tmp_path):
    from spidec.fixed import quantize

    g = quantize(spidec.passes.run(dense_feedback()))
    path = tmp_path / "q.spir"
    save(g, path)
    text = path.read_text()
    assert load(path) == g
    for old, new, message in (
            ("lower program model=dense_fb hash=", "lower program model=other hash=", "model do not match"),
            (" T=30 T_back=100 sf=100.0 encoding=constant", " T=50 T_back=100 sf=100.0 encoding=constant",
             "T do not match"),
            ("lower state name=u_h dtype=i32 size=8 ", "lower state name=u_h dtype=i32 size=2 ", "buffer plan"),
            ("lower quantization", "lower quantization input_bits=8\nlower quantization", "given twice"),
    ):
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(SpidecError, match=message):
            load(path)
    lines = [ln for ln in text.splitlines() if not ln.startswith("lower qtensor name=\"h.bias\"")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpidecError, match="do not cover exactly the graph's tensors"):
        load(path)


def test_changing_a_lowered_graph_drops_its_program():
    """A graph edited after lowering has no stale program: compile lowers it again."""
    from spidec import Neuron, Population

    g = spidec.passes.run(dense_feedback())
    h = g.copy()
    old = h.node("h")
    h.replace_node(Population("h", old.shape, Neuron(vth=0.7), old.bias))
    assert g.program is not None and h.program is None
    assert spidec.passes.lower(h).program.population("h").vth == 0.7
