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
    the first conv layer (BatchNorm after conv2, folded by the frontends)."""

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


EXAMPLES = {"digits_fb": DigitsFB, "mnist_mlp_fb": MnistMlpFB, "convnet_f": ConvNetF, "lenet_f": LeNetF}
