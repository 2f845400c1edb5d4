"""A small model zoo. Any ``nn.Module`` works with the meta core; these are the defaults.

Buffer policy: meta-learning here is functional (``torch.func.functional_call``) and the
server aggregates parameters only, so models must not carry buffers. BatchNorm therefore
uses batch statistics (``track_running_stats=False``), exactly as the MAML reference code
does; :func:`check_no_buffers` rejects a model that would silently keep running statistics
that no client adapts and no server aggregates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.config import Settings


class MLP(nn.Module):
    """Flatten -> [Linear -> activation]* -> Linear. ``hidden=()`` is logistic regression."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, act: type[nn.Module]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """MAML's 4-block conv net (Finn et al. 2017, Sec. 5.2): conv3x3 -> BN -> ReLU -> pool."""

    def __init__(self, in_channels: int, channels: Sequence[int], image_size: int, classes: int):
        super().__init__()
        blocks: list[nn.Module] = []
        width, size = in_channels, image_size
        for c in channels:
            blocks += [
                nn.Conv2d(width, c, 3, padding=1),
                nn.BatchNorm2d(c, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            width, size = c, (size + 1) // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class LSTMLayer(nn.Module):
    """One LSTM layer (Hochreiter & Schmidhuber 1997) as a loop over time of Linear gates.

    ``nn.LSTM``'s fused kernel has no vmap batching rule (a cohort of clients cannot run
    it), so the recurrence is written with plain ops, which ``torch.func`` batches and
    differentiates twice (second-order MAML through time). Gates i, f, g, o as in
    ``nn.LSTM``; the forget-gate bias starts at 1, as in LEAF's TensorFlow BasicLSTMCell.
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_gates = nn.Linear(in_features, 4 * hidden)
        self.hidden_gates = nn.Linear(hidden, 4 * hidden, bias=False)
        bound = hidden**-0.5  # nn.LSTM's initialization
        with torch.no_grad():
            for w in (self.input_gates.weight, self.input_gates.bias, self.hidden_gates.weight):
                w.uniform_(-bound, bound)
            self.input_gates.bias[hidden : 2 * hidden] += 1.0

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(batch, time, in) -> (batch, time, hidden), or (batch, hidden) at the last step."""
        # Every time step's input part at once, split by unbind: its backward is one stack,
        # where indexing pre[:, t] would build and add a full-size gradient per step (T^2).
        pre = self.input_gates(x).unbind(1)
        h = c = x.new_zeros(x.shape[0], self.hidden)
        outputs = []
        for step in pre:
            i, f, g, o = (step + self.hidden_gates(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return h if last_only else torch.stack(outputs, dim=1)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: embedding 8 -> stacked LSTM -> Linear on the last step.

    Input: character ids (any dtype; they index the embedding), shape (batch, time).
    Output: logits of the next character, (batch, vocabulary). LEAF uses 2 x 256.
    """

    def __init__(self, vocabulary: int, hidden: Sequence[int], embedding: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding)
        widths = [embedding, *hidden]
        self.layers = nn.ModuleList(
            LSTMLayer(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x.long())
        for j, layer in enumerate(self.layers):
            h = layer(h, last_only=j == len(self.layers) - 1)
        return self.head(h)


def check_no_buffers(model: nn.Module) -> None:
    names = [n for n, _ in model.named_buffers()]
    if names:
        raise ValueError(
            f"model has buffers {names}; meta-learning here aggregates and adapts parameters "
            "only. Use BatchNorm(track_running_stats=False) (batch statistics, as in MAML) "
            "or register the state as parameters."
        )


def build_model(
    settings: Settings, input_shape: tuple[int, ...], num_outputs: int, seed: int | None = None
) -> nn.Module:
    """Build the configured model; with ``seed`` its initial weights are reproducible."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _build(settings, input_shape, num_outputs)
    check_no_buffers(model)
    return model


def model_for(settings: Settings, seed: int | None = None) -> nn.Module:
    """The configured model for the configured dataset (no data is read)."""
    from common.data.registry import dataset_info

    info = dataset_info(settings)
    return build_model(settings, info.input_shape, info.num_classes or 1, seed=seed)


def _build(settings: Settings, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    in_features = 1
    for d in input_shape:
        in_features *= d
    if settings.model == "logreg":
        return MLP(in_features, (), num_outputs, nn.ReLU)
    if settings.model == "lstm":
        if len(input_shape) != 1:
            raise ValueError(f"model 'lstm' needs character windows (T,), got {input_shape}")
        return CharLSTM(num_outputs, settings.hidden)
    if settings.model == "cnn":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"model 'cnn' needs square image inputs (C, H, H), got {input_shape}")
        return ConvNet(input_shape[0], settings.hidden, input_shape[1], num_outputs)
    # ReLU as in MAML's sinusoid net; Per-FedAvg's MLP uses ELU (set by the experiment).
    act = nn.ELU if settings.activation == "elu" else nn.ReLU
    return MLP(in_features, settings.hidden, num_outputs, act)
