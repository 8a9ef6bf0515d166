"""The float C runtime's lazy optimiser step (model.c.j2, lz_step): a dense input synapse's weight
is stepped column by column, only where the inputs were nonzero, and a column that missed k steps
is brought current by the closed form A^k of momentum and weight decay. It must equal the dense
step (SGD with momentum and weight decay on every element, every step) to float tolerance, over
many steps with long runs of zero inputs, a learning-rate change and a checkpoint/resume between."""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import nn

import spidec


class Net(nn.Module):
    spidec_inputs = {"x": (20,), "z": (16,)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 16)
        self.fb = nn.Linear(16, 16, bias=False)
        self.ro = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc.weight.mul_(2.0)
            self.fb.weight.mul_(0.8 / self.fb.weight.norm())

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_next = torch.clamp(self.fc(x) + self.fb(z), 0, 1)
        return z_next, self.ro(z_next)


def _sparse_inputs(n: int) -> np.ndarray:
    """Input i is nonzero only in every (i % 7 + 1)-th sample: columns miss runs of up to 6 steps,
    and input 0 is never nonzero after the first sample."""
    rng = np.random.default_rng(3)
    x = rng.random((n, 20)).astype(np.float32) + 0.2
    for i in range(20):
        keep = np.arange(n) % (i % 7 + 1) == 0
        x[~keep, i] = 0.0
    x[1:, 0] = 0.0
    return x


def test_lazy_step_equals_the_dense_step(tmp_path):
    torch.manual_seed(0)
    g = spidec.passes.run(spidec.from_torch(Net()), T=20, T_back=40, momentum=0.9, weight_decay=0.01, sf=10.0)
    art = spidec.compile(g, "c", tmp_path / "c")
    src = (tmp_path / "c" / "model.c").read_text()
    assert "lz_sync_t_fc_weight" in src and "lz_sync_t_fb_weight" not in src  # the input weight only
    rt = art.build()
    prog = g.program
    gs = np.float32(next(r.scale for r in prog.rules if r.tensor == "fc.weight"))
    mu, wd = np.float32(prog.optimizer.momentum), np.float32(prog.optimizer.weight_decay)
    sf = np.float32(prog.sf)

    n = 48
    x, y = _sparse_inputs(n), np.arange(n) % 4
    w = w0 = rt.get_weights()["fc.weight"].astype(np.float32).reshape(16, 20)
    m = np.zeros_like(w)
    ckpt = str(tmp_path / "ck.bin").encode()
    err = ctypes.create_string_buffer(256)
    touched_once = 0
    for t in range(n):
        lr = np.float32(0.5 if t < 20 else 0.2)  # a schedule change at step 20
        rt.learn_batch(x[t:t + 1], y[t:t + 1])
        grad = rt.grads()["fc.weight"].reshape(w.shape)
        touched_once += int(np.any(grad != 0))
        np.testing.assert_array_equal(grad[:, x[t] == 0], 0.0)  # zero inputs: no gradient in their columns
        m = mu * m + gs * grad + wd * w  # the dense step, in float32 as the runtime computes it
        w = w - (lr / sf) * m
        rt.step(float(lr))
        if t == 30:  # a checkpoint, then resume from it (the runtime's own file format)
            assert rt.lib.spide_checkpoint_save(ckpt, 1, err, 256) == 0, err.value
            epoch = ctypes.c_int(0)
            rt.set_weights({"fc.weight": np.zeros_like(w)})  # the file must bring everything back
            assert rt.lib.spide_checkpoint_load(ckpt, ctypes.byref(epoch), err, 256) == 0, err.value
    assert touched_once > 30
    got = rt.get_weights()["fc.weight"].reshape(w.shape)
    scale = float(np.abs(w).max())
    assert np.abs(got - w).max() <= 1e-5 * scale, np.abs(got - w).max()
    # the momentum too (read through the same access function the checkpoint uses)
    mom = np.zeros(w.size, np.float32)
    i = rt.tensor_names.index("fc.weight")
    rt.lib.spide_get_momentum(i, mom)
    assert np.abs(mom.reshape(w.shape) - m).max() <= 1e-5 * float(np.abs(m).max())
    # the weights moved far more than the tolerance: the test can fail
    assert np.abs(w - w0).max() > 100 * 1e-5 * scale


def test_lazy_step_in_spide_train_at_batch_1(tmp_path):
    """spide_train's online epoch (batch 1, the case the lazy step is for) is deterministic and
    independent of the thread setting."""
    torch.manual_seed(1)
    g = spidec.passes.run(spidec.from_torch(Net()), T=16, T_back=30)
    art = spidec.compile(g, "c", tmp_path / "c")
    rt = art.build()
    x, y = _sparse_inputs(24), np.arange(24) % 4
    hist = rt.train(x, y, epochs=1, batch=1, lr=0.3)
    assert np.isfinite(hist[0]["loss"])
    a = rt.get_weights()
    rt2 = spidec.compile(g, "c", tmp_path / "c2").build()
    rt2.train(x, y, epochs=1, batch=1, lr=0.3, threads=2)  # batch 1 runs on one thread anyway
    b = rt2.get_weights()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_reading_the_weights_does_not_change_training(tmp_path):
    """Evaluation and get_weights/momentum between epochs read lazily stepped columns without
    catching them up in place: the weights after more training are bit-identical with and without
    the reads (a catch-up split in two would round twice)."""
    torch.manual_seed(4)
    g = spidec.passes.run(spidec.from_torch(Net()), T=16, T_back=30)
    x, y = _sparse_inputs(32), np.arange(32) % 4
    finals = []
    for k, read in enumerate((False, True)):
        rt = spidec.compile(g, "c", tmp_path / f"c{k}").build()
        rt.train(x, y, epochs=1, batch=1, lr=0.3, seed=1)
        if read:
            rt.get_weights()
            rt.momentum()
            rt.evaluate(x[:8], y[:8])
            rt.forward(x[:3])
        rt.train(x, y, epochs=1, batch=1, lr=0.3, seed=2)
        finals.append(rt.get_weights())
    for name in finals[0]:
        np.testing.assert_array_equal(finals[0][name], finals[1][name], err_msg=name)
