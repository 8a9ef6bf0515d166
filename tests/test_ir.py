"""The IR graph: construction, validation messages that name the node, tensors by name."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from conftest import conv_feedback, dense_feedback, two_feedback

from spidec import Dense, Flatten, Graph, Neuron, Reshape, Scale, SpidecError, Synapse


def base() -> Graph:
    g = Graph("g")
    g.add_input("x", [4])
    g.add_population("h", [3])
    return g


def error_of(g: Graph) -> SpidecError:
    with pytest.raises(SpidecError) as e:
        g.validate()
    return e.value


def test_networkx_view_holds_nodes_and_keyed_synapses():
    g = two_feedback()
    assert isinstance(g.nx, nx.MultiDiGraph)
    assert set(g.nx.nodes) == {"x", "x2", "a", "b", "c", "y"}
    assert ("c", "a", "c_a") in g.nx.edges(keys=True)
    assert g.nx.edges["b", "b", "b_b"]["obj"].delay == 1


def test_parallel_synapses_between_the_same_nodes():
    g = base()
    g.add_synapse("x", "h", Dense(np.ones((3, 4))))
    g.add_synapse("x", "h", [Scale(2.0), Dense(np.ones((3, 4)))])
    assert [e.name for e in g.synapses()] == ["x_h", "x_h_2"]
    g.validate()


def test_step_order_is_topological_over_undelayed_synapses():
    assert two_feedback().step_order() == ["a", "b", "c", "y"]
    assert conv_feedback().step_order() == ["c1", "c2", "y"]


def test_shape_mismatch_names_the_synapse_and_op():
    g = base()
    g.add_synapse("x", "h", [Scale(1.0), Dense(np.ones((3, 5)))], name="fc")
    e = error_of(g)
    assert e.node == "fc"
    assert "synapse 'fc' (x [4] -> h)" in str(e) and "op 1 (dense)" in str(e) and "[5]" in str(e)


def test_delivered_shape_must_match_the_target():
    g = base()
    g.add_synapse("x", "h", Dense(np.ones((2, 4))), name="fc")
    assert "delivers shape [2] to 'h' of shape [3]" in str(error_of(g))


def test_population_without_input():
    g = base()
    g.add_population("lonely", [2])
    g.add_synapse("x", "h", Dense(np.ones((3, 4))))
    e = error_of(g)
    assert e.node == "lonely" and "population 'lonely' has no incoming synapse" in str(e)


def test_cycle_without_delay_names_the_cycle_and_the_fix():
    g = base()
    g.add_population("k", [3])
    g.add_synapse("x", "h", Dense(np.ones((3, 4))))
    g.add_synapse("h", "k", Dense(np.eye(3)), name="hk")
    g.add_synapse("k", "h", Dense(np.eye(3)), name="kh")
    e = error_of(g)
    assert "cycle" in str(e) and ("h -> k -> h" in str(e) or "k -> h -> k" in str(e))
    assert "delay=1" in str(e) and "hk" in str(e) and "kh" in str(e)
    g2 = base()
    g2.add_population("k", [3])
    g2.add_synapse("x", "h", Dense(np.ones((3, 4))))
    g2.add_synapse("h", "k", Dense(np.eye(3)))
    g2.add_synapse("k", "h", Dense(np.eye(3)), delay=1)
    g2.validate()


@pytest.mark.parametrize("bias, ok", [((3,), True), ((4,), False), ((3, 1), False)])
def test_bias_shape(bias, ok):
    g = Graph("g")
    g.add_input("x", [4])
    g.add_population("h", [3], bias=np.zeros(bias))
    g.add_synapse("x", "h", Dense(np.ones((3, 4))))
    if ok:
        g.validate()
    else:
        e = error_of(g)
        assert e.node == "h" and "bias of 'h' has shape" in str(e) and "expected [3]" in str(e)


def test_per_channel_bias_of_a_conv_population():
    g = conv_feedback()
    assert g.node("c1").bias.shape == (3,)
    bad = g.with_tensors({})
    bad.replace_node(type(g.node("c1"))("c1", (3, 6, 6), bias=np.zeros(6)))
    assert "or [3] (per channel)" in str(error_of(bad))


def test_non_finite_tensors_are_refused():
    g = base()
    w = np.ones((3, 4))
    w[1, 2] = np.nan
    g.add_synapse("x", "h", Dense(w), name="fc")
    e = error_of(g)
    assert e.node == "fc" and "NaN or inf" in str(e)


def test_inputs_take_no_current_and_readouts_feed_nothing():
    g = base()
    g.add_readout("y", [3])
    g.add_synapse("x", "h", Dense(np.ones((3, 4))))
    g.add_synapse("h", "y", Dense(np.eye(3)))
    g.add_synapse("h", "x", Dense(np.ones((4, 3))), name="back")
    assert "ends at input 'x'" in str(error_of(g))
    g2 = base()
    g2.add_readout("y", [3])
    g2.add_synapse("x", "h", Dense(np.ones((3, 4))))
    g2.add_synapse("h", "y", Dense(np.eye(3)))
    g2.add_synapse("y", "h", Dense(np.eye(3)), delay=1, name="loop")
    assert "starts at readout 'y'" in str(error_of(g2))


def test_names_are_identifiers_and_unique():
    g = base()
    with pytest.raises(SpidecError, match="used twice"):
        g.add_population("h", [2])
    with pytest.raises(SpidecError, match="not an identifier"):
        g.add_population("2bad", [2])
    with pytest.raises(SpidecError, match="no node named 'nope'"):
        g.add_synapse("x", "nope", Dense(np.ones((3, 4))))
    g.add_synapse("x", "h", Dense(np.ones((3, 4))), name="s")
    with pytest.raises(SpidecError, match="used twice"):
        g.add_population("s", [3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "HH"}, "IF or LIF"),
        ({"vth": -1.0}, "positive"),
        ({"vth": 1.0, "u_rest": 2.0}, "below vth"),
        ({"model": "IF", "leak": 0.5}, "no leak"),
        ({"model": "LIF", "leak": 1.5}, "(0, 1]"),
    ],
)
def test_neuron_parameters(kwargs, message):
    with pytest.raises(SpidecError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Neuron(**kwargs)


def test_neuron_defaults_to_the_spide_reset():
    n = Neuron("LIF", vth=0.5, leak=0.9)
    assert n.u_rest == -0.5 and n.V == 1.0


def test_synapse_delay_and_ops():
    with pytest.raises(SpidecError, match="delay must be 0 or 1"):
        Synapse((Scale(1.0),), delay=2)
    with pytest.raises(SpidecError, match="at least one op"):
        Synapse(())


def test_tensor_names_and_replacement():
    g = conv_feedback()
    names = list(g.parameters())
    assert names == ["c1.bias", "c2.bias", "conv1.weight", "pool_conv.weight", "fb.weight", "cls.weight"]
    g2 = g.with_tensors({"fb.weight": np.zeros((108, 27))})
    assert np.all(g2.tensor("fb.weight") == 0) and not np.all(g.tensor("fb.weight") == 0)
    assert g2 != g and g.with_tensors({}) == g
    with pytest.raises(SpidecError, match="has shape"):
        g.with_tensors({"fb.weight": np.zeros(3)})
    with pytest.raises(SpidecError, match="no tensor named"):
        g.with_tensors({"nope": 1})


def test_two_weights_in_one_chain_are_numbered():
    g = base()
    g.add_synapse("x", "h", [Dense(np.ones((5, 4))), Dense(np.ones((3, 5)), trainable=False)], name="s")
    slots = g.tensor_slots()
    assert list(slots) == ["s.0.weight", "s.1.weight"]
    assert list(g.parameters()) == ["s.0.weight"]
    assert list(g.parameters(learnable_only=False)) == ["s.0.weight", "s.1.weight"]


def test_synapse_grads_through_a_chain_equal_finite_differences():
    """The chain rule through adjoints: d<post, S(pre)>/dW1 for S = reshape . dense2 . scale . dense1."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((6, 4)), rng.standard_normal((6, 6))
    syn = Synapse((Dense(w1), Scale(0.7), Dense(w2), Reshape((2, 3))))
    pre, post = rng.standard_normal((5, 4)), rng.standard_normal((5, 2, 3))
    grads = syn.grads(post, pre)
    for i, w in ((0, w1), (2, w2)):
        e = rng.standard_normal(w.shape)
        ops = list(syn.ops)
        ops[i] = ops[i].replace(weight=w + e)
        df = np.sum(post * Synapse(tuple(ops)).apply(pre)) - np.sum(post * syn.apply(pre))
        assert abs(df - np.sum(grads[i]["weight"] * e)) < 1e-9 * (1 + abs(df))


def test_copy_is_independent():
    g = dense_feedback()
    c = g.copy()
    c.add_population("extra", [2])
    assert "extra" not in g and "extra" in c


def test_graph_repr_and_counts():
    g = dense_feedback()
    assert g.num_parameters() == 8 + 4 + 48 + 64 + 32
    assert "dense_fb" in repr(g) and "156 parameters" in repr(g)
    assert str(g).startswith("# spidec IR")


def test_flatten_then_dense_graph_validates():
    g = Graph("g")
    g.add_input("img", [2, 3, 3])
    g.add_population("h", [4])
    g.add_synapse("img", "h", [Flatten(), Dense(np.ones((4, 18)))])
    g.validate()
