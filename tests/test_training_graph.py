"""Crafted training graphs (issue 18): a ``.spir`` that already holds the training structure and
schedule is compiled as it is, so every couple, backward synapse, injection, update rule and
schedule list must fit the forward graph, and every setting must be a finite float32 and every
count in range. A mismatch is one SpidecError (on load, on compile from the API and on the
command line), never a traceback, a program that does not build, or one that indexes past a
buffer. The fuzz mutates the text form of a small training graph: what spidec accepts must
compile to C and run a few samples clean under AddressSanitizer and UndefinedBehaviorSanitizer.

``SPIDEC_FUZZ_CASES=N`` raises both fuzz budgets (parse: 10 N cases, compile and run: N builds).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spidec
from spidec import SpidecError
from spidec.data import write_spds
from spidec.training import MAX_STEPS, Training, Update

FUZZ_CASES = int(os.environ.get("SPIDEC_FUZZ_CASES", "0"))
needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs cc and make")


def _text(g: spidec.Graph) -> tuple[str, dict[str, np.ndarray]]:
    """The training graph's text without its step program (so that edits are not refused as a stale
    program, but checked for what they are), and its tensors."""
    text, tensors = spidec.dumps(g, inline_max=0)
    return text.split("\n# the step program")[0] + "\n", tensors


DIGITS = spidec.passes.run(spidec.load(EXAMPLES / "digits_fb.spir"), T=8, T_back=10)
DIGITS_TEXT, DIGITS_TENSORS = _text(DIGITS)


def _one_error(text: str, tensors: dict[str, np.ndarray]) -> SpidecError:
    """The SpidecError that loading ``text`` raises, checked to be one line."""
    with pytest.raises(SpidecError) as e:
        spidec.loads(text, tensors)
    assert "\n" not in str(e.value)
    return e.value


# ------------------------------------------------------------------ crafted variants

UPDATE_FC = "update @fc_in.weight = local(synapse=fc_in, post=z_couple, gate=z)"
CRAFTED = {
    # the update rule of one synapse's weight pointed at another synapse: wrote past gr_fb / t_fc_in_weight
    "local rule on another synapse": ("local(synapse=fc_in,", "local(synapse=fb,",
                                      r"update of 'fc_in.weight' must be local\(synapse=fc_in, post=z_couple, "
                                      r"gate=z\), not local\(synapse=fb"),
    "unknown backward_order name": ("backward_order=[z_couple]", "backward_order=[nope]",
                                    r"backward_order=\[nope\] lists 'nope', which is no couple"),
    "readout in forward_order": ("forward_order=[z]", "forward_order=[logits]",
                                 r"forward_order=\[logits\] lists 'logits', which is no population"),
    "input in forward_order": ("forward_order=[z]", "forward_order=[x]", r"lists 'x', which is no population"),
    "population twice in forward_order": ("forward_order=[z]", "forward_order=[z, z]", r"lists 'z' twice"),
    "empty forward_order": ("forward_order=[z]", "forward_order=[]", r"forward_order=\[\] misses 'z'"),
    "empty delayed": ("delayed=[z]", "delayed=[]", r"schedule delayed=\[\] misses 'z'"),
    "empty delayed_back": ("delayed_back=[z_couple]", "delayed_back=[]", r"delayed_back=\[\] misses 'z_couple'"),
    "couple in delayed": ("delayed=[z]", "delayed=[z_couple]", r"lists 'z_couple', which is no population read"),
    "number in a schedule list": ("delayed=[z]", "delayed=[3]", r"schedule option delayed has the wrong kind"),
    "schedule statement without forward_order": ("forward_order=[z] ", "", r"it misses forward_order"),
    "two schedule statements": ("\nschedule ", "\nschedule forward_order=[] backward_order=[] delayed=[] "
                                "delayed_back=[]\nschedule ", r"a second 'schedule' statement \(the first is on line"),
    "unknown gate": ("bias(post=z_couple, gate=z)", "bias(post=z_couple, gate=q)",
                     r"update of 'z.bias' must be bias\(post=z_couple, gate=z\), not bias\(post=z_couple, gate=q\)"),
    "population as the post of a bias rule": ("bias(post=z_couple, gate=z)", "bias(post=z, gate=z)",
                                              r"update of 'z.bias' must be bias\(post=z_couple, gate=z\)"),
    "bias rule on a weight": (UPDATE_FC, "update @fc_in.weight = bias(post=z_couple, gate=z)",
                              r"update of 'fc_in.weight' must be local\(.*\), not bias\("),
    "delta rule on a population's weight": (UPDATE_FC, "update @fc_in.weight = delta(synapse=fc_in, post=logits)",
                                            r"must be local\(.*\), not delta\("),
    "duplicated update": (UPDATE_FC, UPDATE_FC + "\n" + UPDATE_FC, r"'fc_in.weight' has two update rules"),
    "missing update": (UPDATE_FC + "\n", "", r"learnable tensor\(s\) fc_in.weight have no update rule"),
    "update of no tensor": (UPDATE_FC, UPDATE_FC.replace("@fc_in.weight", "@fc_in.bias"),
                            r"update of 'fc_in.bias', which is no tensor of the graph"),
    "unknown update kind": ("= local(synapse=fc_in", "= hebb(synapse=fc_in", r"unknown rule 'hebb'"),
    "missing backward synapse": ("backward fb_T:", "# backward fb_T:", r"synapse 'fb' has no backward synapse"),
    "backward synapse twice": ("backward fb_T: z_couple -> z_couple gate=z delay=1 = transpose(fb)",
                               "backward fb_T: z_couple -> z_couple gate=z delay=1 = transpose(fb)\n"
                               "backward fb_T2: z_couple -> z_couple gate=z delay=1 = transpose(fb)",
                               r"synapse 'fb' has two backward synapses, 'fb_T' and 'fb_T2'"),
    "backward synapse of an input synapse": ("transpose(fb)", "transpose(fc_in)",
                                             r"transpose of 'fc_in', which joins no two populations"),
    "undelayed backward of a delayed synapse": ("gate=z delay=1", "gate=z", r"must run .* delay=1, the transpose"),
    "backward delay 2": ("gate=z delay=1", "gate=z delay=2", r"delay must be an integer from 0 to 1, got 2"),
    "missing injection": ("inject logits", "# inject logits", r"synapse 'readout' into readout 'logits' has no loss"),
    "injection twice": ("inject logits -> z_couple = transpose(readout)",
                        "inject logits -> z_couple = transpose(readout)\n"
                        "inject logits -> z_couple = transpose(readout)", r"injected twice through 'readout'"),
    "couple named like a synapse": ("couple z_couple: z", "couple fb: z", r"couple 'fb' has the name of a node"),
    "second couple of a population": ("couple z_couple: z vth=0.5 u_rest=-0.5",
                                      "couple z_couple: z vth=0.5 u_rest=-0.5\ncouple z_c2: z vth=0.5 u_rest=-0.5",
                                      r"population 'z' has two couples"),
    "string milestone": ("milestones=[]", 'milestones=["a"]', r"milestone \(an epoch\) must be an integer .*got 'a'"),
    "fractional milestone": ("milestones=[]", "milestones=[1.5]", r"milestone .* got 1.5"),
    "negative milestone": ("milestones=[]", "milestones=[-1]", r"milestone .* got -1"),
    "decreasing milestones": ("milestones=[]", "milestones=[40, 20]", r"milestones must be increasing"),
    "milestone beyond a C int": ("milestones=[]", "milestones=[2147483648]", r"milestone .* 2,147,483,647"),
    "1e999 scale factor": ("sf=100.0", "sf=1e999", r"sf must be a finite float32 number, got inf"),
    "1e999 couple threshold": ("vth=0.5 u_rest=-0.5", "vth=1e999", r"couple 'z_couple': vth must be a finite float32"),
    "couple threshold whose spike overflows": ("vth=0.5 u_rest=-0.5", "vth=3e38", r"spike size 2 vth must be a finite"),
    "inf couple threshold": ("vth=0.5 u_rest=-0.5", "vth=inf", r"couple option vth has the wrong kind of value"),
    "neuron threshold beyond float32": ("neuron=IF(vth=1.0, u_rest=-1.0)", "neuron=IF(vth=1e39)",
                                        r"population 'z': neuron vth must be a finite float32 number"),
    "1e999 learning rate": ("lr=0.1", "lr=1e999", r"optimiser setting lr must be a finite float32"),
    "T of 2**31": ("T=8", "T=2147483648", r"T \(forward time steps\) must be a positive integer up to 1,000,000"),
    "T just above the bound": ("T=8", f"T={MAX_STEPS + 1}", r"up to 1,000,000, got 1000001"),
    "T_back of 2**31": ("T_back=10", "T_back=2147483648", r"T_back \(backward time steps\) must be a positive"),
    "two simulate statements": ("simulate T=8", "simulate T=8\nsimulate T=9", r"a second 'simulate' statement"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_training_graphs_are_one_clear_error(case):
    old, new, message = CRAFTED[case]
    assert old in DIGITS_TEXT, "the crafted edit must apply to the training graph's text"
    err = _one_error(DIGITS_TEXT.replace(old, new, 1), DIGITS_TENSORS)
    assert re.search(message, str(err)), str(err)


def test_a_thresholds_derived_scale_beyond_float32_is_refused_when_lowered():
    """vth = 1e-30 is a finite float32, but the rule's 1 / V**2 is not: the step program is refused."""
    text = DIGITS_TEXT.replace("neuron=IF(vth=1.0, u_rest=-1.0)", "neuron=IF(vth=1e-30)")
    g = spidec.loads(text, DIGITS_TENSORS)
    with pytest.raises(SpidecError, match=r"bias_rule z.bias scale is 2.5e\+59, beyond the finite float32"):
        spidec.passes.lower(g)


def test_a_float64_tensor_beyond_float32_is_refused_on_its_line():
    """1e300 is finite in float64, but the programs hold tensors as float32 (where it is inf)."""
    tensors = {k: v.astype(np.float64) for k, v in DIGITS_TENSORS.items()}
    tensors["fb.weight"][0, 0] = 1e300
    err = _one_error(DIGITS_TEXT, tensors)
    line = DIGITS_TEXT[:DIGITS_TEXT.index("synapse fb:")].count("\n") + 1
    assert str(err).startswith(f"<text>:{line}: synapse 'fb', op 0 (dense): weight holds values beyond the float32")


def test_the_unmodified_training_graph_loads_and_compiles_to_the_same_program(tmp_path):
    g = spidec.loads(DIGITS_TEXT, DIGITS_TENSORS)
    assert (g.simulation, g.training, g.schedule) == (DIGITS.simulation, DIGITS.training, DIGITS.schedule)
    assert spidec.passes.lower(g).program == DIGITS.program
    a = spidec.compile(g, target="c", out=tmp_path / "loaded")
    b = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=tmp_path / "passes", T=8, T_back=10)
    for name in ("model.c", "weights.c"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes()


def test_a_valid_reordering_of_the_statements_and_schedule_is_accepted():
    """Statement order is free, and any step order in which every node comes after what it reads
    in the same step is a valid schedule; the step order that breaks that is refused."""
    g = spidec.passes.run(_two_population_graph(), upto="schedule")
    text, tensors = _text(g)
    lines = text.splitlines()
    updates = [ln for ln in lines if ln.startswith("update ")]
    rest = [ln for ln in lines if not ln.startswith("update ")]
    h = spidec.loads("\n".join(rest + updates[::-1]), tensors)
    assert {u.tensor for u in h.training.updates} == {u.tensor for u in g.training.updates}
    assert "forward_order=[a, b]" in text and "backward_order=[b_couple, a_couple]" in text
    with pytest.raises(SpidecError, match=r"forward_order puts 'b' before 'a', which feeds it in the same step "
                                          r"through 'a_b'"):
        spidec.loads(text.replace("forward_order=[a, b]", "forward_order=[b, a]"), tensors)
    with pytest.raises(SpidecError, match=r"backward_order puts 'a_couple' before 'b_couple'"):
        spidec.loads(text.replace("backward_order=[b_couple, a_couple]", "backward_order=[a_couple, b_couple]"),
                     tensors)


def test_another_valid_step_order_trains_the_same(tmp_path):
    """Two populations that do not read each other in the same step may update in either order:
    the sim program of the reordered schedule computes the same rates and the same step."""
    pytest.importorskip("torch")  # (the sim programs run on it)
    rng = np.random.default_rng(5)
    g = spidec.Graph("two_ways")
    g.add_input("x", [3])
    for name in ("p", "q"):
        g.add_population(name, [4], bias=rng.uniform(-0.2, 0.4, 4))
        g.add_synapse("x", name, spidec.Dense(rng.uniform(-0.8, 0.8, (4, 3))))
    g.add_readout("y", [2])
    g.add_synapse("q", "q", spidec.Dense(rng.uniform(-0.5, 0.5, (4, 4))), delay=1)
    for name in ("p", "q"):
        g.add_synapse(name, "y", spidec.Dense(rng.uniform(-1, 1, (2, 4))))
    text, tensors = _text(spidec.passes.run(g, upto="schedule", T=10, T_back=12))
    old = "forward_order=[p, q] backward_order=[q_couple, p_couple]"
    assert old in text
    swapped = spidec.loads(text.replace(old, "forward_order=[q, p] backward_order=[p_couple, q_couple]"), tensors)
    x, y = rng.random((5, 3)), np.arange(5) % 2
    results = []
    for k, h in enumerate((spidec.loads(text, tensors), swapped)):
        art = spidec.compile(h, target="sim", out=tmp_path / f"o{k}")
        rates = art.rates(x)
        art.train(x, y, epochs=1, batch=5)
        results.append((rates, art.get_weights()))
    assert [p.name for p in spidec.passes.lower(swapped).program.populations] == ["q", "p"]
    for a, b in zip(*results):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rates, weights = results[0]
    assert all(np.any((r > 0) & (r < 1)) for r in rates.values())  # (both populations spike, not saturated)
    assert not np.array_equal(weights["x_p.weight"], tensors["x_p.weight"])  # (and the step moved them)


def test_a_crafted_training_structure_is_refused_from_the_api_too(tmp_path):
    """A Training built in Python (no text form) is checked where it is lowered and compiled."""
    t = DIGITS.training
    bad = tuple(dataclasses.replace(u, synapse="fb") if u.tensor == "fc_in.weight" else u for u in t.updates)
    g = DIGITS.copy()
    g.training, g.program = dataclasses.replace(t, updates=bad), None
    for target in ("c", "sim"):
        with pytest.raises(SpidecError, match=r"update of 'fc_in.weight' must be local\(synapse=fc_in"):
            spidec.compile(g, target=target, out=tmp_path / target)
        assert not (tmp_path / target / "model.c").exists() and not (tmp_path / target / "model.py").exists()
    with pytest.raises(SpidecError, match=r"training updates must be a tuple of Updates"):
        Training(updates=[Update("z.bias", "bias")])  # type: ignore[arg-type]
    with pytest.raises(SpidecError, match=r"T_back .* got 2.5"):
        Training(T_back=2.5)  # type: ignore[arg-type]
    with pytest.raises(SpidecError, match=r"update of z.bias: gate 'a b' is not a name"):
        Update("z.bias", "bias", post="z_couple", gate="a b")


def test_the_cli_refuses_a_crafted_training_graph_before_writing_code(run_cli, tmp_path):
    """The issue's case: the fixed-point build indexed past t_fc_in_weight / gr_fb."""
    spir = tmp_path / "crafted.spir"
    text = DIGITS_TEXT.replace("local(synapse=fc_in,", "local(synapse=fb,")
    np.savez(tmp_path / "crafted.npz", **DIGITS_TENSORS)
    spir.write_text(text.replace("graph digits_fb\n", 'graph digits_fb\ntensors "crafted.npz"\n'))
    for extra in ((), ("--fixed",)):
        out = tmp_path / ("fixed" if extra else "float")
        code, _, err = run_cli("compile", str(spir), "--target", "c", *extra, "-o", str(out))
        assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "update of 'fc_in.weight' must be local(synapse=fc_in" in err
        assert not (out / "model.c").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--T", "3000000000", r"T \(forward time steps\) must be a positive integer up to 1,000,000"),
    ("--T-back", "2147483648", r"T_back \(backward time steps\) must be a positive integer up to"),
    ("--feedback-norm", "nan", r"feedback_norm must be a finite float32 number, got nan"),
    ("--vth-back", "inf", r"couple 'z_couple': vth must be a finite float32 number, got inf"),
    ("--vth", "1e39", r"neuron vth must be a finite float32 number"),
    ("--lr", "1e39", r"lr must be a finite float32 number"),
    ("--milestones", "-1", r"milestone \(an epoch\) must be an integer from 0"),
    ("--milestones", "40,20", r"milestones must be increasing"),
])
def test_the_cli_refuses_settings_the_programs_cannot_hold(run_cli, tmp_path, option, value, message):
    code, _, err = run_cli("compile", str(EXAMPLES / "digits_fb.spir"), "--target", "c", f"{option}={value}", "-o",
                           str(tmp_path / "out"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "model.c").exists()


def test_the_largest_accepted_counts_still_lower():
    g = spidec.passes.run(_two_population_graph(), T=MAX_STEPS, T_back=MAX_STEPS, milestones=[0, 2**31 - 1])
    assert (g.program.T, g.program.T_back) == (MAX_STEPS, MAX_STEPS)


# ------------------------------------------------------------------ fuzz of the text form

def _two_population_graph() -> spidec.Graph:
    """x[3] -> a[4] -> b[3] (LIF) with feedback b -> a, a frozen skip x -> b and a readout y[2]:
    couples with undelayed and delayed backward synapses, every kind of update rule, a non-trivial
    step order, a scalar factor and a non-learnable tensor, in a model that builds in a second."""
    rng = np.random.default_rng(3)
    g = spidec.Graph("tiny2")
    g.add_input("x", [3])
    g.add_population("a", [4], bias=rng.uniform(-0.2, 0.4, 4))
    g.add_population("b", [3], spidec.Neuron("LIF", vth=0.5, leak=0.9), bias=rng.uniform(-0.2, 0.4, 3))
    g.add_readout("y", [2], bias=rng.uniform(-0.2, 0.2, 2))
    g.add_synapse("x", "a", spidec.Dense(rng.uniform(-0.8, 0.8, (4, 3))))
    g.add_synapse("a", "b", [spidec.Scale(0.5), spidec.Dense(rng.uniform(-0.8, 0.8, (3, 4)))])
    g.add_synapse("x", "b", spidec.Dense(rng.uniform(-0.5, 0.5, (3, 3)), trainable=False))
    g.add_synapse("b", "a", spidec.Dense(rng.uniform(-0.5, 0.5, (4, 3))), delay=1)
    g.add_synapse("b", "y", spidec.Dense(rng.uniform(-1.0, 1.0, (2, 3))))
    return g.validate()


TINY = spidec.passes.run(_two_population_graph(), T=6, T_back=8)
TINY_TEXT, TINY_TENSORS = _text(TINY)
_SECTION = TINY_TEXT.index("\nsimulate ")  # the statements the passes added (and the nodes before them)
NAMES = sorted({*TINY.nx.nodes, *(e.name for e in TINY.synapses()), *(c.name for c in TINY.training.couples),
                *(b.name for b in TINY.training.backward), "nope"})
TENSOR_NAMES = sorted({*TINY.tensor_slots(), "a.weight", "nope.bias"})
KINDS = ["local", "bias", "delta", "delta_bias", "hebb"]
NUMBERS = ["0", "1", "2", "3", "-1", "0.5", "0.9", "1.5", "100", "-0.0", "1e-30", "1e-45", "3e38", "1e39", "1e999",
           "2147483648", "1000001", "1000000", "12", "nan", "x", '"7"', "[1]"]
# settings a user may give that spidec accepts, some of them numerically extreme (what a run must survive)
RUN_NUMBERS = ["0", "1", "2", "3", "7", "30", "100", "0.25", "0.5", "0.9", "0.99", "1.5", "1e-3", "1e-6", "1e6", "1e30",
               "3e38"]
IDENT = re.compile(r"(?<![@\w.])[A-Za-z_]\w*(?![\w(])")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
STATEMENT_WORDS = {"simulate", "train", "couple", "backward", "inject", "update", "schedule", "population", "readout",
                   "input", "synapse", "delay", "gate", "transpose"}


def mutate(text: str, edits: list[tuple[int, int, int, int]], numbers: list[str] = NUMBERS) -> str:
    """Apply ``edits`` (kind, a, b, c: integers that pick what and where) to the statements of a
    training graph: swap a name for another of the graph's, point an update at another tensor,
    change a rule's kind, change a number, drop / duplicate / move a line."""
    head, body = text[:_SECTION], text[_SECTION:]
    lines = body.split("\n")
    node_lines = head.split("\n")
    for kind, a, b, c in edits:
        kind %= 8
        stmts = [i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")]
        i = stmts[a % len(stmts)]
        line = lines[i].split("  #")[0]
        if kind == 0:  # a name for another
            spots = [m for m in IDENT.finditer(line) if m.group() not in STATEMENT_WORDS]
            if spots:
                m = spots[b % len(spots)]
                line = line[:m.start()] + NAMES[c % len(NAMES)] + line[m.end():]
        elif kind == 1:  # an update of another tensor
            line = re.sub(r"@[\w.]+", "@" + TENSOR_NAMES[b % len(TENSOR_NAMES)], line, count=1)
        elif kind == 2:  # another rule
            line = re.sub(r"= (local|bias|delta|delta_bias)\(", f"= {KINDS[b % len(KINDS)]}(", line, count=1)
        elif kind == 3:  # a number, in a pass statement or a neuron
            target = lines if b % 3 else node_lines  # (a node: a shape, a neuron setting, a scalar factor)
            spots = [(j, m) for j, ln in enumerate(target) if not ln.startswith("#")
                     for m in NUMBER.finditer(ln.split("  #")[0])]
            j, m = spots[a % len(spots)]
            target[j] = target[j][:m.start()] + numbers[c % len(numbers)] + target[j][m.end():]
            continue
        elif kind == 4:  # drop a line
            line = ""
        elif kind == 5:  # duplicate a line
            line = line + "\n" + line
        elif kind == 6:  # move a line
            del lines[i]
            lines.insert(b % (len(lines) + 1), line)
            continue
        else:  # drop an option
            spots = list(re.finditer(r" \w+=(\[[^\]]*\]|[^\s,)]+)", line))
            if spots:
                m = spots[b % len(spots)]
                line = line[:m.start()] + line[m.end():]
        lines[i] = line
    return "\n".join(node_lines) + "\n".join(lines)


EDIT = st.tuples(st.integers(0, 7), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))


def _accepts(text: str) -> spidec.Graph | None:
    """The lowered graph when spidec accepts ``text``; None when it refuses it with a SpidecError
    (anything else fails the test)."""
    try:
        return spidec.passes.lower(spidec.loads(text, TINY_TENSORS))
    except SpidecError as e:
        assert str(e) and "\n" not in str(e)
        return None


def test_mutate_reaches_the_statements_it_claims():
    """The fuzz edits really change the text (a test of the fuzzer, so the fuzz cannot pass by
    mutating nothing)."""
    assert mutate(TINY_TEXT, []) == TINY_TEXT and _accepts(TINY_TEXT) is not None
    for kind in range(8):
        changed = sum(mutate(TINY_TEXT, [(kind, a, 7 * a + 1, 3 * a + 2)]) != TINY_TEXT for a in range(40))
        assert changed >= 8, kind


@settings(max_examples=max(400, 10 * FUZZ_CASES), deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.lists(EDIT, min_size=1, max_size=3))
def test_mutated_training_graphs_are_refused_or_lower(edits):
    g = _accepts(mutate(TINY_TEXT, edits))
    if g is not None:  # what is accepted fits its graph: the structure the spide pass would derive
        t, ref = g.training, TINY.training
        assert sorted(t.updates, key=lambda u: u.tensor) == sorted(ref.updates, key=lambda u: u.tensor)
        assert sorted(t.backward, key=lambda b: b.name) == sorted(ref.backward, key=lambda b: b.name)
        assert set(g.schedule.delayed) == set(TINY.schedule.delayed)


@functools.cache
def _accepted_mutants(n: int, seed: int = 18) -> list[str]:
    """``n`` distinct accepted mutants (by step program), mostly of their settings (numbers)."""
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for _ in range(200 * n):
        if len(out) >= n:
            break
        edits = [(int(rng.choice([3, 3, 3, 3, 3, 6, 0, 7])), *map(int, rng.integers(0, 10**6, 3)))
                 for _ in range(rng.integers(1, 5))]
        text = mutate(TINY_TEXT, edits, RUN_NUMBERS)
        g = _accepts(text)
        if g is not None and g.simulation.T + g.training.T_back <= 4000 and g.program.hash not in out:
            out[g.program.hash] = text
    return list(out.values())


@needs_cc
def test_accepted_mutants_build_and_run_clean_under_sanitizers(tmp_path):
    mutants = _accepted_mutants(max(12, FUZZ_CASES))
    assert len(mutants) >= 8  # the fuzz reaches valid edits, not only refusals
    rng = np.random.default_rng(0)
    data = write_spds(tmp_path / "d.spds", rng.random((6, 3)), np.arange(6) % 2, 2)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    for k, text in enumerate(mutants):
        g = spidec.loads(text, TINY_TENSORS)
        fixed = k % 3 == 2  # every third one in fixed point, where it quantizes
        try:
            art = spidec.compile(g, target="c", out=tmp_path / f"m{k}", fixed=fixed)
        except SpidecError as e:  # (e.g. a setting fixed point cannot prove safe)
            assert fixed and "\n" not in str(e), str(e)
            continue
        subprocess.run(["make", "-s", "-C", str(art.out), "train-san"], check=True, capture_output=True, timeout=300)
        done = subprocess.run([str(art.out / "train-san"), "train", "--train", str(data), "--test", str(data),
                               "--epochs", "1", "--batch", "4", "--threads", "2", "--quiet"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, (text, done.stderr[-2000:])
        # done, or one clean error line (an extreme setting may make training diverge: exit 3, NaN caught)
        assert done.returncode == 0 or (done.returncode in (1, 3) and done.stderr.startswith("error: ")), \
            (text, done.returncode, done.stderr[-2000:])


def test_accepted_mutants_train_in_the_sim_program(tmp_path):
    """The same mutants through the sim backend: its program imports and trains a batch (a setting
    it cannot hold would have failed as Python, e.g. a NameError on ``inf``)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 3)), np.arange(6) % 2
    for k, text in enumerate(_accepted_mutants(max(12, FUZZ_CASES))):
        art = spidec.compile(spidec.loads(text, TINY_TENSORS), target="sim", out=tmp_path / f"m{k}")
        try:
            with np.errstate(all="ignore"):
                assert len(art.train(x, y, epochs=1, batch=4)) == 1, text
        except SpidecError as e:  # (an extreme setting may make training diverge: one clear error)
            assert "diverged" in str(e) and "\n" not in str(e), text
