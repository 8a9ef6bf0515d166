"""The passes: pure, composable, explicit training structure that prints and parses back."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import conv_feedback, dense_feedback, two_feedback

import spidec
from spidec import Graph, SpidecError, passes
from spidec.training import Simulation


def test_passes_are_pure_and_compose():
    g = two_feedback()
    before = g.copy()
    t = passes.run(g)
    assert g == before and g.training is None and g.simulation is None
    assert t.simulation == Simulation(30, "constant") and t.training is not None and t.schedule is not None
    assert passes.lower(passes.schedule(passes.spide(passes.spiking(g)))) == t


def test_training_structure_of_two_feedback_edges():
    g = passes.run(two_feedback(), T=50, T_back=80, vth_back=0.25, sf=10.0, lr=0.05)
    t = g.training
    assert [(c.name, c.of, c.vth, c.S) for c in t.couples] == [
        ("a_couple", "a", 0.25, 0.5), ("b_couple", "b", 0.25, 0.5), ("c_couple", "c", 0.25, 0.5)]
    back = {(b.forward, b.src, b.dst, b.gate, b.delay) for b in t.backward}
    assert back == {("a_b", "b_couple", "a_couple", "b", 0), ("b_c", "c_couple", "b_couple", "c", 0),
                    ("c_a", "a_couple", "c_couple", "a", 1), ("b_b", "b_couple", "b_couple", "b", 1)}
    assert [(i.readout, i.couple, i.forward) for i in t.injections] == [("y", "c_couple", "c_y")]
    kinds = {u.tensor: u.kind for u in t.updates}
    assert kinds == {"a.bias": "bias", "b.bias": "bias", "c.bias": "bias", "y.bias": "delta_bias",
                     "x_a.weight": "local", "a_b.weight": "local", "b_c.weight": "local", "x2_c.weight": "local",
                     "c_a.weight": "local", "b_b.weight": "local", "c_y.weight": "delta"}
    assert g.schedule.forward == ("a", "b", "c") and g.schedule.backward == ("c_couple", "b_couple", "a_couple")
    assert g.schedule.delayed == ("b", "c") and g.schedule.delayed_back == ("b_couple", "a_couple")
    assert (t.T_back, t.sf, t.optimizer.lr, g.simulation.T) == (80, 10.0, 0.05, 50)


@pytest.mark.parametrize("build", [dense_feedback, conv_feedback, two_feedback])
@pytest.mark.parametrize("upto", ["spiking", "spide", "schedule"])
def test_training_graph_prints_and_parses_back(build, upto):
    g = passes.run(build(), upto=upto, milestones=(3, 7))
    text, tensors = spidec.dumps(g)
    assert spidec.loads(text, tensors) == g


def test_printed_training_graph_shows_couples_backward_synapses_and_rules(run_cli, examples_dir):
    code, out, err = run_cli("inspect", str(examples_dir / "digits_fb.spir"), "--after", "spide", "--T-back", "64")
    assert code == 0, err
    for line in ("couple z_couple: z vth=0.5 u_rest=-0.5",
                 "backward fb_T: z_couple -> z_couple gate=z delay=1 = transpose(fb)",
                 "inject logits -> z_couple = transpose(readout)",
                 "update @fc_in.weight = local(synapse=fc_in, post=z_couple, gate=z)",
                 "update @readout.weight = delta(synapse=readout, post=logits)",
                 "train T_back=64 sf=100.0"):
        assert line in out, line


def test_pass_errors():
    g = dense_feedback()
    with pytest.raises(SpidecError, match="needs the spiking pass first"):
        passes.spide(g)
    with pytest.raises(SpidecError, match="needs the spide pass first"):
        passes.schedule(passes.spiking(g))
    with pytest.raises(SpidecError, match="unknown pass 'quantise'"):
        passes.run(g, upto="quantise")
    with pytest.raises(SpidecError, match="unknown pass option"):
        passes.run(g, T_bak=3)
    no_readout = Graph("n")
    no_readout.add_input("x", [2])
    no_readout.add_population("h", [2])
    no_readout.add_synapse("x", "h", spidec.Dense(np.eye(2)))
    with pytest.raises(SpidecError, match="no readout"):
        passes.run(no_readout)
    with pytest.raises(SpidecError, match=r"T \(forward time steps\) must be a positive integer"):
        passes.run(g, T=0)


def test_spiking_pass_sets_neurons():
    g = passes.spiking(dense_feedback(), neuron="LIF", vth=0.5, leak=0.8)
    n = g.node("h").neuron
    assert (n.model, n.vth, n.u_rest, n.leak, n.V) == ("LIF", 0.5, -0.5, 0.8, 1.0)
    t = passes.spide(g)
    assert t.training.couple_of("h").leak == 0.8


def test_edited_training_text_is_validated():
    g = passes.run(dense_feedback())
    text, tensors = spidec.dumps(g)
    bad = text.replace("gate=h delay=1 = transpose(h_h)", "gate=h = transpose(h_h)")
    assert bad != text
    with pytest.raises(SpidecError, match="backward synapse 'h_h_T' must run h_couple -> h_couple gate=h delay=1"):
        spidec.loads(bad, tensors)
    bad = text.replace("update @h.bias = bias(post=h_couple, gate=h)", "update @h.nope = bias(post=h_couple, gate=h)")
    with pytest.raises(SpidecError, match=r"update of 'h\.nope'"):
        spidec.loads(bad, tensors)


def test_pass_options_are_declared_once_in_the_signatures():
    """The CLI's option groups come from the pass signatures (spidec.options); the dataclass
    defaults of the training structure must say the same (they are what a .spir without them gets)."""
    import argparse

    from spidec.options import add_arguments, specs
    from spidec.training import Optimizer, Simulation, Training

    defaults = {s.name: s.default for fn in passes.PIPELINE.values() for s in specs(fn)}
    assert {"T", "T_back", "sf", "lr", "neuron", "milestones", "feedback_norm"} <= set(defaults)
    assert Simulation() == Simulation(defaults["T"], defaults["encoding"])
    assert (Training().T_back, Training().sf) == (defaults["T_back"], defaults["sf"])
    assert Optimizer() == Optimizer(defaults["lr"], defaults["momentum"], defaults["weight_decay"],
                                    defaults["milestones"], defaults["gamma"], defaults["feedback_norm"])
    p = argparse.ArgumentParser()
    dests = add_arguments(p, list(passes.PIPELINE.values()))
    assert set(dests) == set(defaults)
    args = p.parse_args(["--T", "20", "--milestones", "3,5", "--neuron", "LIF"])
    assert (args.T, args.milestones, args.neuron, args.sf) == (20, (3, 5), "LIF", None)
    assert "(default: 100)" in p.format_help() and "(default: kept)" in p.format_help()
