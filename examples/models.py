"""The example feedback networks, written as PyTorch modules the way a spidec user writes them.

Each module is *one step of the equilibrium map*: ``forward(x, z) -> (z_next, logits)``. The state
input ``z`` is the previous step's rates of the population that ``z_next`` returns; spidec closes
that loop with a one-step delay. Every ``Hardtanh(0, 1)`` is a population of spiking neurons; every
other op is a linear synapse. The class attributes ``spidec_inputs`` (per-sample shapes),
``spidec_state`` and ``spidec_outputs`` tell the frontend how to read the module:

    spidec inspect --torch examples/models.py:DigitsFB
    python examples/export.py           # the .onnx (both exporters) and .spir files of examples/

Initialisation follows PyTorch's defaults; the feedback weight is rescaled to a Frobenius norm of
``FEEDBACK_NORM`` so that the loop contracts (SPIDE restricts it to <= 2 during training).

``EXAMPLES`` are spidec's small test models; ``PAPER`` (at the end) holds the SPIDE authors' own
models with their initialisation and hyperparameters: see examples/PAPER.md.
"""

from __future__ import annotations

import torch
from torch import nn

FEEDBACK_NORM = 1.0


def _restrict(weight: torch.Tensor, norm: float = FEEDBACK_NORM) -> None:
    with torch.no_grad():
        weight.mul_(norm / weight.norm())


class DigitsFB(nn.Module):
    """8x8 digits: 64 -> hidden with hidden -> hidden feedback -> 10."""

    spidec_inputs = {"x": (64,), "z": (128,)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.fc_in = nn.Linear(64, hidden)
        self.fb = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.Hardtanh(0.0, 1.0)
        self.readout = nn.Linear(hidden, 10)
        _restrict(self.fb.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_next = self.act(self.fc_in(x) + self.fb(z))
        return z_next, self.readout(z_next)


class MnistMlpFB(nn.Module):
    """MNIST: 784 -> 256 with self-feedback -> 10 (the FC model of SPIDE's cost table)."""

    spidec_inputs = {"x": (1, 28, 28), "z": (256,)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc_in = nn.Linear(784, hidden)
        self.fb = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, 10)
        _restrict(self.fb.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_next = torch.clamp(self.fc_in(torch.flatten(x, 1)) + self.fb(z), 0.0, 1.0)
        return z_next, self.readout(z_next)


class MnistMcuFB(MnistMlpFB):
    """MNIST for a microcontroller with 256 KiB of RAM (STM32F4/F7, nRF52840 class): 784 -> 128 with
    self-feedback -> 10, trained integer-only with online updates. Its int16 weights are 231 KiB
    and the whole training state stays under 256 KiB (no momentum buffers: online updates). Train it
    with ``MCU_SETTINGS`` (sf 10 and lr 0.03 at batch 1, see bench/mcu.py)."""

    spidec_inputs = {"x": (1, 28, 28), "z": (128,)}

    def __init__(self) -> None:
        super().__init__(hidden=128)


# pass options of the microcontroller examples at batch 1 (online updates): SPIDE's sf 100 is for
# batch 128; one sample's loss gradient is 128x larger, so a smaller sf keeps the couples from
# saturating (the digits board measured it), and lr 0.03 learns MNIST best in one epoch (bench/mcu.py)
MCU_SETTINGS = {"T": 30, "T_back": 100, "sf": 10.0, "lr": 0.03}


class MnistMcuConvF(nn.Module):
    """MNIST for a microcontroller, convolutional: img[1,28,28] -> conv5 s2 p2 (8 channels, bias) plus
    a feedback convT2 s2 from the state (no bias, Frobenius norm 1) -> population c1[8,14,14] ->
    avgpool 2 with rate gain 2 -> population c2[8,7,7] (the state) -> readout Linear(392, 10).

    Why this shape. In fixed point the input is constant over a sample, so the currents of the conv
    from the image are computed once per sample and held for the T steps: that conv costs no
    per-step synaptic work however many neurons it feeds, and a spatial first layer of 1,568 neurons
    comes for 200 shared weights (``mnist_mcu``'s 784 -> 128 dense input is 200 KiB of its 231 KiB
    of int16 weights). All weights here are the conv's 200 + 8, the feedback's 256 and the readout's
    3,930: about 9 KiB of int16. The per-step work is the feedback convT and the pool (the spikes of
    1,568 + 392 neurons), and the backward couples over the same synapses transposed. The pool's
    rate gain 2 lets c2 reach rate 1 when half of a window's rate is there (one epoch at the constant
    lr 0.02: 96.73% at gain 2, 96.38% at gain 1.5, 96.18% at gain 3).

    Train it with ``MCU_CONV_SETTINGS`` and the schedule ``MCU_CONV_SCHEDULE`` (linear:10: the rate
    falls linearly in 10 steps over the epoch) at batch 1 with online updates. Measured (host
    fixed-point C build, bit-identical to the Cortex-M4 board; one MNIST epoch, 10,000 test images;
    the schedule done by hand: lr 0.1 (1 - k/10) over the k-th tenth of the epoch's order):

    ==============================================  =========  ========
    settings                                        seed 0     seed 1
    ==============================================  =========  ========
    sf 30, lr 0.1, linear:10 (``MCU_CONV_*``)        97.83%     97.76%
    sf 30, lr 0.02, constant (best constant rate)    96.73%
    sf 30, lr 0.1, constant                          95.20%
    sf 30, lr 0.03 / 0.01, constant                  96.30% / 95.92%
    ==============================================  =========  ========

    (The hand-made tenths restart the online weight decay's 64-step phase at each of them; the
    trainers' ``linear:10`` keeps it.) On the Cortex-M4F (mps2-an386 under QEMU, ``bench/mcu.py
    --models mnist_mcu_conv``, one epoch with ``--lr-schedule linear:10``): 10.4% -> 97.9%, 7.96 M
    instructions per training sample, 60.1 KiB of flash, 76.7 KiB of RAM."""

    spidec_inputs = {"x": (1, 28, 28), "z": (8, 7, 7)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, channels: int = 8, gain: float = 2.0) -> None:
        super().__init__()
        c = channels
        if c != 8:
            self.spidec_inputs = {"x": (1, 28, 28), "z": (c, 7, 7)}
        self.gain = gain
        self.conv = nn.Conv2d(1, c, 5, stride=2, padding=2)  # 28 -> 14
        self.pool = nn.AvgPool2d(2)  # 14 -> 7
        self.fb = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)  # 7 -> 14
        self.readout = nn.Linear(c * 7 * 7, 10)
        _restrict(self.fb.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = torch.clamp(self.conv(x) + self.fb(z), 0.0, 1.0)
        z_next = torch.clamp(self.pool(c1) * self.gain, 0.0, 1.0)
        return z_next, self.readout(torch.flatten(z_next, 1))


# pass options of the conv microcontroller example (online updates at batch 1): sf 30 (one epoch at
# the constant lr 0.02: 96.73%, sf 100: 96.60%) and lr 0.1, which learns best when it falls linearly
# over the epoch; at a constant rate use lr 0.02 (96.73% instead of 97.83%)
MCU_CONV_SETTINGS = {"T": 30, "T_back": 100, "sf": 30.0, "lr": 0.1}
MCU_CONV_SCHEDULE = "linear:10"  # the trainers' --lr-schedule: lr falls linearly in 10 steps over the epoch


class ConvNetF(nn.Module):
    """SPIDE's ConvNet-F for MNIST: conv5 1->c s2, conv5 c->c s2, conv5 c->c, feedback convT3 s2
    from the last conv layer into the first, readout Linear(c*7*7, 10)."""

    spidec_inputs = {"x": (1, 28, 28), "z": (64, 7, 7)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        if c != 64:
            self.spidec_inputs = {"x": (1, 28, 28), "z": (c, 7, 7)}
        self.conv1 = nn.Conv2d(1, c, 5, stride=2, padding=2)  # 28 -> 14
        self.conv2 = nn.Conv2d(c, c, 5, stride=2, padding=2)  # 14 -> 7
        self.conv3 = nn.Conv2d(c, c, 5, padding=2)  # 7 -> 7
        self.fb = nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)  # 7 -> 14
        self.act1, self.act2, self.act3 = nn.Hardtanh(0.0, 1.0), nn.Hardtanh(0.0, 1.0), nn.Hardtanh(0.0, 1.0)
        self.dropout = nn.Dropout(0.2)
        self.readout = nn.Linear(c * 7 * 7, 10)
        _restrict(self.fb.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = self.act1(self.conv1(x) + self.fb(z))
        a2 = self.act2(self.conv2(a1))
        z_next = self.act3(self.conv3(self.dropout(a2)))
        return z_next, self.readout(torch.flatten(z_next, 1))


class LeNetF(nn.Module):
    """The reference LeNet's shapes with the pools as spiking layers of their own: conv5 1->15 p2,
    pool, conv5 15->40 p2, pool, FC 1960->300; feedback convT4 s4 from the second pool back into
    the first conv layer (BatchNorm after conv2, folded by the frontends).

    Not the authors' model: a test model with their shapes. Its pools have rate gain 1, where the
    authors' spiking pool (an average of spikes with weight 1, reset V = 2) is ``avgpool / V`` in
    rate units; it has a feedback and a BatchNorm they do not have, and PyTorch's default init. The
    authors' LeNet is :class:`PaperMnistLeNet` below."""

    spidec_inputs = {"x": (1, 28, 28), "z": (40, 7, 7)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 15, 5, padding=2)
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(15, 40, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(40)
        self.pool2 = nn.AvgPool2d(2)
        self.fb = nn.ConvTranspose2d(40, 15, 4, stride=4, bias=False)  # 7 -> 28
        self.fc = nn.Linear(1960, 300)
        self.readout = nn.Linear(300, 10)
        _restrict(self.fb.weight)
        with torch.no_grad():  # a BatchNorm that is not the identity, so folding it is tested for real
            self.bn2.running_mean.uniform_(-0.1, 0.1)
            self.bn2.running_var.uniform_(0.5, 1.5)
            self.bn2.weight.uniform_(0.5, 1.5)
            self.bn2.bias.uniform_(-0.1, 0.1)
        self.eval()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = torch.clamp(self.conv1(x) + self.fb(z), 0, 1)
        p1 = torch.clamp(self.pool1(c1), 0, 1)
        c2 = torch.clamp(self.bn2(self.conv2(p1)), 0, 1)
        z_next = torch.clamp(self.pool2(c2), 0, 1)
        h = torch.clamp(self.fc(torch.flatten(z_next, 1)), 0, 1)
        return z_next, self.readout(h)


EXAMPLES = {"digits_fb": DigitsFB, "mnist_mlp_fb": MnistMlpFB, "mnist_mcu": MnistMcuFB,
            "mnist_mcu_conv": MnistMcuConvF, "convnet_f": ConvNetF,
            "lenet_f": LeNetF}


# ====================================================================== the SPIDE authors' models
# The models of the SPIDE paper as the authors' code builds them (pkuxmq/SPIDE-FSNN: models/*.py and
# the cfg dicts of the training scripts), written as one step of the equilibrium map in spidec's rate
# units. examples/PAPER.md maps every layer and lists what differs.
#
# Units. The authors' synapses act on spikes and their neurons reset by V = vth - u_rest = 2 vth, so
# the rates approximate a_0 = clamp((F_x(x) + N_fb(a_last)) / V, 0, 1), a_k+1 = clamp(N_k(a_k) / V, 0, 1).
# spidec's models are in rate units, W_r = W / V (biases too): every synapse into a population is the
# authors' weight divided by V, and an authors' pooling layer (SNNPooling: an average pool of spikes,
# weight 1) is `avgpool / V` followed by a population. The readout reads the rates and is unchanged.
#
# Initialisation. Each model is built in the authors' order with the authors' initialisation, in their
# units, then divided by V: 'kaiming' (SNNConv/SNNFC/SNNConvTranspose(init='kaiming')) is
# kaiming_normal_(a=0, mode='fan_in'); 'default' (the CIFAR models pass no init) is uniform(-1, 1)
# with every output unit's weights scaled to norm 1; biases zero; a transposed-conv feedback is then
# multiplied by 0.1; the readout keeps nn.Linear's default init. The feedback norm restriction
# (`_wnorm(norm_range=r)`: the authors' forward uses W min(1, r / ||W||_F), ||W||_F estimated with
# Gaussian probes) is applied once with the exact norm: ||W_r||_F <= r / V. Every random draw of the
# authors' constructors is made in the same order (the two probe batches of `_wnorm` included), so
# after the same torch.manual_seed the initial weights are the authors' divided by V.
#
# Dropout. The authors' VariationalHidDropout2d multiplies a synapse's *output* (after conv/fc, before
# the neuron; one mask per batch for all time steps): nn.Dropout(p) stands exactly there.

PAPER_V = 2.0
"""``vth - u_rest`` of the authors' neurons: vth 1, u_rest = -vth (their default, the SPIDE reset)."""

_WNORM_PROBES = 64  # sample_batch of the authors' weight_frob_norm_restriction


def _authors_init(layer: nn.Module, init: str) -> nn.Module:
    """``layer`` initialised as the authors' SNNConv / SNNFC / SNNConvTranspose ``_initialize_weights``
    (in their units: call :func:`_to_rate_units` afterwards)."""
    w = layer.weight
    with torch.no_grad():
        if init == "kaiming":
            nn.init.kaiming_normal_(w, a=0, mode="fan_in")
        elif init == "default":
            w.uniform_(-1, 1)
            if isinstance(layer, nn.ConvTranspose2d):  # weight [in, out, kh, kw]: per output channel
                for i in range(w.shape[1]):
                    w[:, i] /= torch.norm(w[:, i])
            else:
                for i in range(w.shape[0]):
                    w[i] /= torch.norm(w[i])
        else:
            raise ValueError(f"unknown init {init!r}")
        if layer.bias is not None:
            layer.bias.zero_()
        if isinstance(layer, nn.ConvTranspose2d):
            w.mul_(0.1)
    return layer


def _authors_wnorm(weight: torch.Tensor, norm_range: float) -> None:
    """The feedback norm restriction ``_wnorm(norm_range)`` at construction, in the authors' units:
    their forward uses ``W min(1, r / ||W||_F)``; here the exact norm. Their constructor draws two
    probe batches ``randn(64, weight.shape[0])`` (its own check sums instead of squaring and so
    practically never acts); they are drawn too, so that later random draws line up."""
    with torch.no_grad():
        for _ in range(2):
            torch.randn(_WNORM_PROBES, weight.shape[0])
        norm = float(weight.double().norm())  # float64: a float32 sum of 6.5M squares is off by ~1e-4
        if norm > norm_range:
            weight.mul_(norm_range / norm)


def _to_rate_units(*layers: nn.Module) -> None:
    """Weights and biases acting on spikes (the authors' units) -> rate units: divide by V."""
    with torch.no_grad():
        for layer in layers:
            layer.weight.div_(PAPER_V)
            if layer.bias is not None:
                layer.bias.div_(PAPER_V)


def _drop(p: float) -> nn.Module:
    """The authors create a dropout only for p > 0."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _population() -> nn.Module:
    return nn.Hardtanh(0.0, 1.0)


class PaperMnistLeNet(nn.Module):
    """The authors' LeNet (models/snn_spide_mnist_lenet.py, cfg of mnist_lenet.py): conv5 1->15 p2,
    spiking pool, conv5 15->40 p2, spiking pool, FC 1960->300 (dropout 0.5 on its output), readout
    Linear(300, classes). Five spiking layers; kaiming init.

    The authors' feedback (network_s3) is SNNZero, a zero map from the FC layer to the first: there
    is no feedback, so this model has no state (``spidec_state = {}``) and ``forward(x) -> logits``.
    Its equilibrium, the authors' z (``f_type='last'``: the FC layer's rates), is one feed-forward pass.
    """

    spidec_inputs = {"x": (1, 28, 28)}
    spidec_state: dict[str, str] = {}
    spidec_outputs = ("logits",)

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.network_x = _authors_init(nn.Conv2d(1, 15, 5, stride=1, padding=2), "kaiming")  # 28 -> 28
        self.network_p1 = nn.AvgPool2d(2, 2)  # 28 -> 14
        self.network_s1 = _authors_init(nn.Conv2d(15, 40, 5, stride=1, padding=2), "kaiming")  # 14 -> 14
        self.network_p2 = nn.AvgPool2d(2, 2)  # 14 -> 7
        self.network_s2 = _authors_init(nn.Linear(40 * 7 * 7, 300), "kaiming")
        self.drop_s2 = _drop(0.5)
        self.classifier = nn.Linear(300, classes)
        _to_rate_units(self.network_x, self.network_s1, self.network_s2)
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = (_population() for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a0 = self.layer0(self.network_x(x))
        a1 = self.layer1(self.network_p1(a0) / PAPER_V)
        a2 = self.layer2(self.network_s1(a1))
        a3 = self.layer3(self.network_p2(a2) / PAPER_V)
        a4 = self.layer4(self.drop_s2(self.network_s2(torch.flatten(a3, 1))))
        return self.classifier(a4)


class PaperMnistConvNetF(nn.Module):
    """The authors' ConvNet-F (models/snn_spide_mnist.py, cfg of mnist_convnetf.py): conv5 1->64 s2
    p2, conv5 64->64 s2 p2, conv5 64->64 s1 p2, feedback convT3 64->64 s2 p1 op1 (no bias, norm
    restriction r = 2) from the last layer into the first, dropout on every synapse's output
    (0.2), readout Linear(64*7*7, classes). Kaiming init."""

    spidec_inputs = {"x": (1, 28, 28), "z": (64, 7, 7)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        c = 64
        self.network_x = _authors_init(nn.Conv2d(1, c, 5, stride=2, padding=2), "kaiming")  # 28 -> 14
        self.network_s1 = _authors_init(nn.Conv2d(c, c, 5, stride=2, padding=2), "kaiming")  # 14 -> 7
        self.network_s2 = _authors_init(nn.Conv2d(c, c, 5, stride=1, padding=2), "kaiming")  # 7 -> 7
        self.network_s3 = _authors_init(nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1,
                                                           bias=False), "kaiming")  # 7 -> 14
        _authors_wnorm(self.network_s3.weight, 2.0)
        self.classifier = nn.Linear(c * 7 * 7, classes)
        _to_rate_units(self.network_x, self.network_s1, self.network_s2, self.network_s3)
        self.drop_x, self.drop_s1, self.drop_s2, self.drop_s3 = (_drop(dropout) for _ in range(4))
        self.layer0, self.layer1, self.layer2 = (_population() for _ in range(3))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a0 = self.layer0(self.drop_x(self.network_x(x)) + self.drop_s3(self.network_s3(z)))
        a1 = self.layer1(self.drop_s1(self.network_s1(a0)))
        z_next = self.layer2(self.drop_s2(self.network_s2(a1)))
        return z_next, self.classifier(torch.flatten(z_next, 1))


class _PaperCifarF(nn.Module):
    """The authors' CIFAR network (models/snn_spide_cifar.py): conv3 3->c0 s2 p1 (32 -> 16), conv3
    c0->c1 s1, conv3 c1->c2 s2 (16 -> 8), conv3 c2->c3 s1, conv3 c3->c4 s1 (all p1), feedback convT3
    c4->c0 s2 p1 op1 (no bias, r = 2) into the first layer, dropout on every synapse's output,
    readout Linear(c4*8*8, classes). The authors pass no init: their 'default' init."""

    channels: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    def __init__(self, classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = self.channels
        init = "default"
        self.network_x = _authors_init(nn.Conv2d(3, c0, 3, stride=2, padding=1), init)  # 32 -> 16
        self.network_s1 = _authors_init(nn.Conv2d(c0, c1, 3, stride=1, padding=1), init)  # 16 -> 16
        self.network_s2 = _authors_init(nn.Conv2d(c1, c2, 3, stride=2, padding=1), init)  # 16 -> 8
        self.network_s3 = _authors_init(nn.Conv2d(c2, c3, 3, stride=1, padding=1), init)  # 8 -> 8
        self.network_s4 = _authors_init(nn.Conv2d(c3, c4, 3, stride=1, padding=1), init)  # 8 -> 8
        self.network_s5 = _authors_init(nn.ConvTranspose2d(c4, c0, 3, stride=2, padding=1, output_padding=1,
                                                           bias=False), init)  # 8 -> 16
        _authors_wnorm(self.network_s5.weight, 2.0)
        self.classifier = nn.Linear(c4 * 8 * 8, classes)
        _to_rate_units(self.network_x, self.network_s1, self.network_s2, self.network_s3, self.network_s4,
                       self.network_s5)
        self.drop_x, self.drop_s1, self.drop_s2, self.drop_s3, self.drop_s4, self.drop_s5 = (
            _drop(dropout) for _ in range(6))
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = (_population() for _ in range(5))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a0 = self.layer0(self.drop_x(self.network_x(x)) + self.drop_s5(self.network_s5(z)))
        a1 = self.layer1(self.drop_s1(self.network_s1(a0)))
        a2 = self.layer2(self.drop_s2(self.network_s2(a1)))
        a3 = self.layer3(self.drop_s3(self.network_s3(a2)))
        z_next = self.layer4(self.drop_s4(self.network_s4(a3)))
        return z_next, self.classifier(torch.flatten(z_next, 1))


class PaperCifarAlexNetF(_PaperCifarF):
    """AlexNet-F (cfg of cifar_alexnetf.py): channels 96, 256, 384, 384, 256; dropout 0.2."""

    channels = (96, 256, 384, 384, 256)
    spidec_inputs = {"x": (3, 32, 32), "z": (256, 8, 8)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__(classes, dropout)


class PaperCifarNetF(_PaperCifarF):
    """CIFARNet-F (cfg of cifar_cifarnetf.py): channels 128, 256, 512, 1024, 512; dropout 0.25."""

    channels = (128, 256, 512, 1024, 512)
    spidec_inputs = {"x": (3, 32, 32), "z": (512, 8, 8)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__(classes, dropout)


class PaperDvsConvNetF(nn.Module):
    """The authors' CIFAR10-DVS network (models/snn_spide_dvscifar.py, cfg of dvs_cifar_convnetf.py):
    one spiking layer, conv9 2->512 s2 p4 (48 -> 24) from the input frame of the step, with a
    self-feedback conv5 512->512 s1 p2 (no bias, r = 10), readout Linear(512*24*24, classes).
    Kaiming init, no dropout (p = 0). The input is time-varying: ``x`` is one frame [2, 48, 48],
    a new one every step (spidec's ``encoding='temporal'``; the authors' ``input_type='spikes'``)."""

    spidec_inputs = {"x": (2, 48, 48), "z": (512, 24, 24)}
    spidec_state = {"z": "z_next"}
    spidec_outputs = ("z_next", "logits")

    def __init__(self, classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        c = 512
        self.network_x = _authors_init(nn.Conv2d(2, c, 9, stride=2, padding=4), "kaiming")  # 48 -> 24
        self.network_s = _authors_init(nn.Conv2d(c, c, 5, stride=1, padding=2, bias=False), "kaiming")
        _authors_wnorm(self.network_s.weight, 10.0)
        self.classifier = nn.Linear(c * 24 * 24, classes)
        _to_rate_units(self.network_x, self.network_s)
        self.drop_x, self.drop_s = _drop(dropout), _drop(dropout)
        self.layer0 = _population()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_next = self.layer0(self.drop_x(self.network_x(x)) + self.drop_s(self.network_s(z)))
        return z_next, self.classifier(torch.flatten(z_next, 1))


def _settings(**kw: object) -> dict:
    """The hyperparameters the authors' scripts use by default, with what every script shares."""
    base = {"vth": 1.0, "vth_back": 0.5, "momentum": 0.9, "weight_decay": 5e-4, "gamma": 0.1, "batch": 128,
            "warmup_iters": 0, "leak": None, "classes": 10, "encoding": "constant"}
    return {**base, **kw}


_MNIST = {"dataset": "mnist", "mean": (0.1307,), "std": (0.3081,), "augmentation": ""}
_CIFAR = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010), "augmentation": "crop4,flip"}
_CIFAR_F = {"T": 30, "T_back": 250, "lr": 0.05, "epochs": 100, "milestones": (50, 75), "warmup_iters": 400,
            "norm_range": 2.0, "init": "default"}

PAPER = {
    # mnist_lenet.py: its --drop (0.2) is parsed but the LeNet model ignores it (0.5 on the FC layer)
    "mnist_lenet": (PaperMnistLeNet, _settings(
        T=30, T_back=100, sf=100.0, lr=0.1, epochs=60, milestones=(20, 40), init="kaiming", norm_range=0.0,
        dropout={"network_x": 0.0, "network_s1": 0.0, "network_s2": 0.5}, **_MNIST)),
    "mnist_convnetf": (PaperMnistConvNetF, _settings(
        T=30, T_back=100, sf=100.0, lr=0.05, epochs=100, milestones=(30, 60, 90), init="kaiming",
        norm_range=2.0, dropout={k: 0.2 for k in ("network_x", "network_s1", "network_s2", "network_s3")},
        **_MNIST)),
    "cifar10_alexnetf": (PaperCifarAlexNetF, _settings(
        sf=400.0, dataset="cifar10", dropout={k: 0.2 for k in (
            "network_x", "network_s1", "network_s2", "network_s3", "network_s4", "network_s5")},
        **_CIFAR_F, **_CIFAR)),
    "cifar10_cifarnetf": (PaperCifarNetF, _settings(
        sf=400.0, dataset="cifar10", dropout={k: 0.25 for k in (
            "network_x", "network_s1", "network_s2", "network_s3", "network_s4", "network_s5")},
        **_CIFAR_F, **_CIFAR)),
    # README: "the scale factor is 400 for CIFAR-10 and 500 for CIFAR-100" (the script's default is 400)
    "cifar100_cifarnetf": (PaperCifarNetF, _settings(
        sf=500.0, dataset="cifar100", classes=100, dropout={k: 0.25 for k in (
            "network_x", "network_s1", "network_s2", "network_s3", "network_s4", "network_s5")},
        **_CIFAR_F, **_CIFAR)),
    # dvs_cifar_convnetf.py: 30 frames per sample (split by event count), T = 30 steps, one frame a
    # step; their Normalize is commented out; frames resized to 48x48 (train and test), then for
    # training Padding(4) + RandomCrop(48), the same window for every frame: spidec's 'crop4'
    "dvs_convnetf": (PaperDvsConvNetF, _settings(
        T=30, T_back=250, sf=400.0, lr=0.05, epochs=70, milestones=(50,), init="kaiming", norm_range=10.0,
        dropout={"network_x": 0.0, "network_s": 0.0}, dataset="cifar10-dvs", mean=None, std=None,
        augmentation="crop4", encoding="temporal", frames=30)),
}
"""The SPIDE authors' models: name -> (class, settings). ``settings`` are the authors' defaults
(their scripts' argparse defaults and cfg dicts; sf for CIFAR-100 from their README): T, T_back,
vth, vth_back (thresholds; u_rest = -vth), sf, lr, momentum, weight_decay, epochs, milestones
(epochs where lr *= gamma), gamma, batch, warmup_iters (linear warm-up of lr over the first
iterations, 0: none), dropout (per synapse module), norm_range (feedback Frobenius bound in their
units, 0: no restriction), leak (None: IF), init, classes, dataset, mean/std of the input
normalisation (None: none), augmentation (training only), encoding. Build one with
``cls(classes=settings['classes'])``."""


def paper_options(name: str) -> dict:
    """spidec pass options (``spidec.compile(g, target, out, **options)``) for the authors' settings
    of ``PAPER[name]``. ``feedback_norm`` is the authors' ``r`` (spidec applies r / V to the
    rate-unit weight); lr and weight decay are theirs (spidec scales the rate-unit step to theirs)."""
    s = PAPER[name][1]
    return {"T": s["T"], "T_back": s["T_back"], "vth": s["vth"], "vth_back": s["vth_back"], "sf": s["sf"],
            "lr": s["lr"], "momentum": s["momentum"], "weight_decay": s["weight_decay"],
            "milestones": tuple(s["milestones"]), "gamma": s["gamma"], "feedback_norm": s["norm_range"],
            "encoding": s["encoding"]}
