"""The models: a small zoo, and any user's model by import path, through one door.

``model`` in the config is a name of :data:`BUILT_IN` (``mlp``, ``logreg``, ``cnn``,
``lstm``) or a factory ``"package.module:function"``. Both are called the same way,
``factory(input_shape, num_outputs, **model_args)``, with the shape of one sample and the
number of outputs from the data (``common.data.registry.dataset_info``) and the JSON
object ``model-args``; a built-in name adds its settings (``hidden-sizes``,
``activation``) as arguments first. So ``model = "common.models:mlp"`` with
``model-args = '{"hidden": [40, 40]}'`` is the same model as ``model = "mlp"``. Every
built model passes :func:`check_model` before round 1 (docs/models.md).

Buffer policy: meta-learning here is functional (``torch.func.functional_call``) and the
server aggregates parameters only, so models must not carry buffers. BatchNorm therefore
uses batch statistics (``track_running_stats=False``), exactly as the MAML reference code
does; :func:`check_no_buffers` rejects a model that would silently keep running statistics
that no client adapts and no server aggregates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from common.config import ConfigError, Settings, Task
from common.plugins import PluginError, load_object
from common.scoring import loss_fn_for

ModelFactory = Callable[..., nn.Module]  # (input_shape, num_outputs, **model_args) -> Module
DEFAULT_HIDDEN = (40, 40)  # hidden-sizes' default, so a factory by path matches it by name


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


def mlp(
    input_shape: Sequence[int],
    num_outputs: int,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    activation: str = "relu",
) -> nn.Module:
    """Flatten -> [Linear -> activation]* -> Linear. ReLU as in MAML's sinusoid net;
    Per-FedAvg's MLP uses ELU (set by its experiments)."""
    act = {"relu": nn.ReLU, "elu": nn.ELU}[activation]
    return MLP(_numel(input_shape), tuple(hidden), num_outputs, act)


def logreg(input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Multinomial logistic regression: one Linear layer on the flattened input."""
    return MLP(_numel(input_shape), (), num_outputs, nn.ReLU)


def cnn(
    input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = DEFAULT_HIDDEN
) -> nn.Module:
    """MAML's conv net, one block per entry of ``hidden`` (its channels)."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"model 'cnn' needs square image inputs (C, H, H), got {input_shape}")
    return ConvNet(input_shape[0], tuple(hidden), input_shape[1], num_outputs)


def lstm(
    input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = DEFAULT_HIDDEN
) -> nn.Module:
    """LEAF's char-LSTM over windows of character ids; ``num_outputs`` is the vocabulary."""
    if len(input_shape) != 1:
        raise ValueError(f"model 'lstm' needs character windows (T,), got {input_shape}")
    return CharLSTM(num_outputs, tuple(hidden))


BUILT_IN: dict[str, ModelFactory] = {"mlp": mlp, "logreg": logreg, "cnn": cnn, "lstm": lstm}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _settings_args(settings: Settings) -> dict[str, Any]:
    """What a built-in name takes from its own settings keys (model-args may override)."""
    if settings.model == "mlp":
        return {"hidden": settings.hidden, "activation": settings.activation}
    return {} if settings.model == "logreg" else {"hidden": settings.hidden}


def model_factory(settings: Settings) -> tuple[ModelFactory, dict[str, Any]]:
    """The factory ``model`` names and the keyword arguments it is called with."""
    if settings.model in BUILT_IN:
        return BUILT_IN[settings.model], _settings_args(settings) | settings.model_kwargs
    return load_object(settings.model, "model"), settings.model_kwargs


class ModelError(ConfigError):
    """The configured model cannot train here; the message names the problem and the fix."""

    def __init__(self, model: str, problem: str) -> None:
        ValueError.__init__(self, f"config key 'model' = {model!r}: {problem}")
        self.key, self.value, self.allowed = "model", model, problem


def without_running_stats(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm normalising by batch statistics (as in MAML).

    Running statistics are buffers that no client adapts and no server aggregates, so
    models here carry none; this drops them in place and returns the model, e.g.
    ``return without_running_stats(torchvision.models.resnet18(num_classes=n))``.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model


def check_no_buffers(model: nn.Module, name: str = "model") -> None:
    names = [n for n, _ in model.named_buffers()]
    if not names:
        return
    norms = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )
    fix = (
        "BatchNorm keeps running statistics: build it with track_running_stats=False or "
        "return common.models.without_running_stats(model) from the factory"
        if norms
        else "keep constants as plain tensor attributes, or learnable state as parameters"
    )
    raise ModelError(
        name,
        f"the model has buffers {names[:5]}; clients adapt and the server aggregates "
        f"parameters only. {fix}",
    )


def check_model(
    model: Any, name: str, input_shape: tuple[int, ...], num_outputs: int, task: Task,
    loss: str = "",
) -> None:  # fmt: skip
    """Before round 1: a Module, without buffers, whose output on one batch fits the task
    (and, with the config's ``loss``, gives a scalar loss on it)."""
    if not isinstance(model, nn.Module):
        raise ModelError(name, f"the factory returned a {type(model).__name__}, not an nn.Module")
    check_no_buffers(model, name)
    x = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout: leave RNG as it was
            out = model(x)
    except Exception as err:
        raise ModelError(
            name, f"its forward on a batch of shape {tuple(x.shape)} raised "
            f"{type(err).__name__}: {err}",
        ) from err  # fmt: skip
    wanted = [(2, num_outputs)] if task is Task.CLASSIFICATION else [(2,), (2, 1)]
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape not in wanted:
        what = (
            f"[batch, {num_outputs}] (one logit per class)"
            if task is Task.CLASSIFICATION
            else "[batch] or [batch, 1] (one value per sample)"
        )
        got = f"shape {list(shape)}" if shape is not None else f"a {type(out).__name__}"
        raise ModelError(
            name, f"on a batch of shape {list(x.shape)} it returned {got}; {task.value} "
            f"needs {what}",
        )  # fmt: skip
    if loss:
        _check_loss(loss, out, task)


def _check_loss(loss: str, out: torch.Tensor, task: Task) -> None:
    loss_fn = loss_fn_for(task, loss)
    target = torch.zeros(2, dtype=torch.int64) if task is Task.CLASSIFICATION else out * 0
    try:
        value = loss_fn(out, target)
    except Exception as err:
        raise PluginError(
            "loss", loss,
            f"loss(pred, target) on the model's output raised {type(err).__name__}: {err}",
        ) from err  # fmt: skip
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise PluginError(
            "loss", loss,
            f"loss(pred, target) must return a scalar tensor (reduce over the batch), got {got}",
        )  # fmt: skip


def build_model(
    settings: Settings, input_shape: tuple[int, ...], num_outputs: int, seed: int | None = None
) -> nn.Module:
    """Build and check the configured model; with ``seed`` its initial weights are
    reproducible."""
    factory, kwargs = model_factory(settings)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = factory(tuple(input_shape), num_outputs, **kwargs)
        except Exception as err:
            raise ModelError(
                settings.model,
                f"factory(input_shape={tuple(input_shape)}, num_outputs={num_outputs}, "
                f"**{kwargs}) raised {type(err).__name__}: {err} (model-args sets the "
                "keyword arguments)",
            ) from err  # fmt: skip
    check_model(
        model, settings.model, tuple(input_shape), num_outputs, settings.task, settings.loss
    )
    return model


def model_for(settings: Settings, seed: int | None = None) -> nn.Module:
    """The configured model for the configured dataset (no data is read)."""
    from common.data.registry import dataset_info

    info = dataset_info(settings)
    return build_model(settings, info.input_shape, info.num_classes or 1, seed=seed)
