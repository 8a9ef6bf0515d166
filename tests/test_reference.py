"""The exact reference: equilibrium and implicit gradient.

Gradients are checked against central finite differences of the loss through the equilibrium.
Inside one mask pattern the equilibrium is a smooth function of the parameters, so with h = 1e-6
the central difference is exact to O(h^2) ~ 1e-12 plus the equilibrium's own error tol/h =
1e-14/1e-6 = 1e-8 relative to gradients of order 1e-2..1: a relative error below 1e-4 leaves a
margin of 100x, while a missing feedback term (the truncated gradient) is off by far more (checked).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAPHS, conv_feedback, dense_feedback, random_inputs, two_feedback

import spidec
from spidec import Dense, Graph, Scale, SpidecError
from spidec import reference as ref

TOL = dict(tol=1e-14, max_iter=20_000)
H = 1e-6


def labels_for(g: Graph, batch: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, g.readouts[0].shape[0], size=batch)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_equilibrium_is_a_fixed_point(name):
    g = GRAPHS[name]()
    x = random_inputs(g, 5)
    eq = ref.equilibrium(g, x, **TOL)
    assert eq.converged and eq.residual < 1e-12
    for a in eq.rates.values():
        assert a.min() >= 0 and a.max() <= 1
    # the three regimes occur, so masks and gradients are exercised for real
    rates = np.concatenate([a.ravel() for a in eq.rates.values()])
    assert 0.2 < np.mean((rates > 0) & (rates < 1)) < 0.95
    assert np.any(rates == 0)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_equilibrium_is_unique_from_any_start_and_damping(name):
    g = GRAPHS[name]()
    x = random_inputs(g, 4)
    eq = ref.equilibrium(g, x, **TOL)
    rng = np.random.default_rng(9)
    init = {p: rng.random(a.shape) for p, a in eq.rates.items()}
    eq2 = ref.equilibrium(g, x, init=init, damping=0.6, **TOL)
    for p in eq.rates:
        np.testing.assert_allclose(eq2.rates[p], eq.rates[p], atol=1e-11)


def test_equilibrium_equals_explicit_clamp_map():
    """a* = clamp(W a* + F x + b, 0, 1), with W and F written out as matrices."""
    g = dense_feedback()
    x = random_inputs(g, 3)["x"]
    a = ref.equilibrium(g, x, **TOL).rates["h"]
    F, W, b = g.tensor("x_h.weight"), g.tensor("h_h.weight"), g.tensor("h.bias")
    np.testing.assert_allclose(a, np.clip(a @ W.T + x @ F.T + b, 0, 1), atol=1e-13)


def test_non_contracting_loop_is_a_clear_error_and_damping_fixes_it():
    g = Graph("osc")
    g.add_input("x", [2])
    g.add_population("h", [2])
    g.add_synapse("x", "h", Dense(np.eye(2)))
    g.add_synapse("h", "h", Scale(-3.0), delay=1, name="fb")
    x = np.full((1, 2), 0.9)
    with pytest.raises(SpidecError) as e:
        ref.equilibrium(g, x)
    msg = str(e.value)
    assert "did not settle" in msg and "'fb' (h -> h)" in msg and "Frobenius norm" in msg
    assert "residual" in msg
    eq = ref.equilibrium(g, x, damping=0.2, **TOL)  # damped map has derivative 1 - 0.2 - 0.6 = 0.2
    np.testing.assert_allclose(eq.rates["h"], 0.9 / 4, atol=1e-12)
    with pytest.warns(spidec.SpidecWarning, match=r"did not settle.*residual.*Frobenius"):
        loose = ref.equilibrium(g, x, strict=False, max_iter=50)
    assert not loose.converged and loose.residual > 0.1


def fd_check(g: Graph, x, targets, entries_per_tensor: int = 4, seed: int = 0):
    """Compare the implicit gradient with central differences: a random direction per tensor
    (covers every entry at once) plus a few single entries."""
    grads = ref.gradients(g, x, targets, **TOL)
    rng = np.random.default_rng(seed)
    assert set(grads.params) == set(g.parameters())
    for name, w in g.parameters().items():
        an = grads.params[name]
        assert an.shape == w.shape
        directions = [rng.standard_normal(w.shape)]
        for flat in rng.choice(w.size, size=min(entries_per_tensor, w.size), replace=False):
            d = np.zeros(w.size)
            d[flat] = 1.0
            directions.append(d.reshape(w.shape))
        for d in directions:
            plus = ref.loss_at(g.with_tensors({name: w + H * d}), x, targets, **TOL)
            minus = ref.loss_at(g.with_tensors({name: w - H * d}), x, targets, **TOL)
            fd = (plus - minus) / (2 * H)
            exact = float(np.sum(an * d))
            assert abs(fd - exact) <= 1e-4 * max(abs(fd), 1e-6), (name, fd, exact)
    return grads


def truncated_delta_differs(g: Graph, grads) -> None:
    """The implicit part matters: the gradient without the W^T(m delta) term is far off."""
    eq = grads.equilibrium
    # dropping the feedback synapses changes the gradient of the input weights substantially
    no_fb = g.with_tensors({n: np.zeros_like(t) for n, t in g.parameters().items()
                            if any(e.synapse.delay and n.startswith(e.name + ".") for e in g.synapses())})
    eq_fixed = ref.Equilibrium(eq.inputs, eq.rates, eq.outputs, 0, 0.0, True)
    truncated = ref.implicit_backward(no_fb, eq_fixed, grads.outputs, method="dense")
    first = next(n for n in g.parameters() if n.endswith("weight"))
    rel = np.linalg.norm(truncated.params[first] - grads.params[first]) / np.linalg.norm(grads.params[first])
    assert rel > 1e-2, rel


def test_gradient_dense_feedback_net():
    g = dense_feedback()
    x = random_inputs(g, 6)
    grads = fd_check(g, x, labels_for(g, 6))
    truncated_delta_differs(g, grads)


def test_gradient_conv_avgpool_net_with_feedback():
    g = conv_feedback()
    x = random_inputs(g, 3)
    grads = fd_check(g, x, labels_for(g, 3), entries_per_tensor=3)
    truncated_delta_differs(g, grads)


def test_gradient_net_with_two_feedback_edges():
    g = two_feedback()
    x = random_inputs(g, 5)
    grads = fd_check(g, x, labels_for(g, 5))
    truncated_delta_differs(g, grads)


def test_gradient_mse_loss_and_input_gradient():
    g = dense_feedback().with_tensors({})
    g.replace_node(type(g.node("y"))("y", (4,), g.node("y").bias, loss="mse"))
    x = random_inputs(g, 4)["x"]
    t = np.random.default_rng(5).standard_normal((4, 4))
    grads = fd_check(g, x, t)
    d = np.random.default_rng(6).standard_normal(x.shape)
    fd = (ref.loss_at(g, x + H * d, t, **TOL) - ref.loss_at(g, x - H * d, t, **TOL)) / (2 * H)
    assert abs(fd - np.sum(grads.inputs["x"] * d)) <= 1e-4 * abs(fd)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_dense_and_gmres_solvers_agree(name):
    g = GRAPHS[name]()
    x = random_inputs(g, 3)
    y = labels_for(g, 3)
    a = ref.gradients(g, x, y, method="dense", **TOL)
    b = ref.gradients(g, x, y, method="gmres", **TOL)
    for n in a.params:
        np.testing.assert_allclose(b.params[n], a.params[n], rtol=1e-8, atol=1e-12)
    for p in a.delta:
        np.testing.assert_allclose(b.delta[p], a.delta[p], rtol=1e-8, atol=1e-12)


def test_delta_solves_the_implicit_equation():
    """delta = g + W^T (m * delta), with W written out as a matrix."""
    g = dense_feedback()
    x = random_inputs(g, 4)
    grads = ref.gradients(g, x, labels_for(g, 4), **TOL)
    W, R = g.tensor("h_h.weight"), g.tensor("h_y.weight")
    m = grads.equilibrium.masks()["h"]
    delta = grads.delta["h"]
    gvec = grads.outputs["y"] @ R
    np.testing.assert_allclose(delta, gvec + (m * delta) @ W, atol=1e-13)


def test_direct_injection_of_dL_da():
    g = two_feedback()
    x = random_inputs(g, 2)
    eq = ref.equilibrium(g, x, **TOL)
    ga = np.random.default_rng(1).standard_normal(eq.rates["b"].shape)
    out = ref.implicit_backward(g, eq, dL_da={"b": ga})
    # linear functional L = <ga, a_b>: check one weight by finite differences
    w = g.tensor("a_b.weight")
    d = np.random.default_rng(2).standard_normal(w.shape)
    lp = np.sum(ga * ref.equilibrium(g.with_tensors({"a_b.weight": w + H * d}), x, **TOL).rates["b"])
    lm = np.sum(ga * ref.equilibrium(g.with_tensors({"a_b.weight": w - H * d}), x, **TOL).rates["b"])
    assert abs((lp - lm) / (2 * H) - np.sum(out.params["a_b.weight"] * d)) < 1e-6


@pytest.mark.parametrize(
    "inputs, targets, message",
    [
        (np.zeros(6), [0], "needs a batch dimension"),
        (np.zeros((2, 5)), [0, 1], "expects shape [B, 6]"),
        (np.full((1, 6), np.nan), [0], "NaN or inf"),
        (np.zeros((0, 6)), [], "empty batch"),
        (np.zeros((2, 6)), np.array([0, 4]), "labels must lie in 0..3"),
        (np.zeros((2, 6)), np.array([0.0, 1.0]), "integer labels of shape [2]"),
        ({"z": np.zeros((1, 6))}, [0], "unknown ['z']"),
    ],
)
def test_bad_inputs_and_targets(inputs, targets, message):
    g = dense_feedback()
    with pytest.raises(SpidecError) as e:
        ref.gradients(g, inputs, np.asarray(targets))
    assert message in str(e.value)


def test_float32_graph_is_solved_in_float64():
    g32 = dense_feedback().astype(np.float32)
    x = random_inputs(g32, 2)
    eq = ref.equilibrium(g32, x, **TOL)
    assert eq.rates["h"].dtype == np.float64 and eq.residual < 1e-12


def test_large_network_uses_the_matrix_free_solver(monkeypatch):
    """Above DENSE_MAX_NEURONS, auto picks GMRES; spot-check it against the dense solve."""
    monkeypatch.setattr(ref, "DENSE_MAX_NEURONS", 100)
    used = []
    monkeypatch.setattr(ref, "_solve_gmres", lambda *a, _f=ref._solve_gmres: used.append(1) or _f(*a))
    rng = np.random.default_rng(0)
    n = 400
    g = Graph("big")
    g.add_input("x", [20])
    g.add_population("h", [n], bias=rng.uniform(-0.2, 0.4, n))
    g.add_readout("y", [3])
    g.add_synapse("x", "h", Dense(rng.uniform(-0.3, 0.3, (n, 20))))
    fb = rng.standard_normal((n, n))
    g.add_synapse("h", "h", Dense(fb * (0.9 / np.linalg.norm(fb, 2))), delay=1)
    g.add_synapse("h", "y", Dense(rng.uniform(-0.1, 0.1, (3, n))))
    x = rng.random((1, 20))
    auto = ref.gradients(g, x, np.array([1]))
    dense = ref.gradients(g, x, np.array([1]), method="dense")
    assert used == [1]
    np.testing.assert_allclose(auto.params["x_h.weight"], dense.params["x_h.weight"], rtol=1e-7, atol=1e-14)
