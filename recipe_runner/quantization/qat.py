"""Quantization-aware training in the shape ONNX Runtime's CPU kernels run fast.

Why not Model Optimizer (Ultralytics' `quantize=8`) or NNCF: measured here, a model they fake-quantize exports
Q/DQ nodes ONNX Runtime's CPU kernels do not fuse (resnet18, 224 px, 1 thread: 30.6 ms against 18.8 ms FP32 and
6.2 ms for ORT's own quantize_static file). So training only has to teach the weights ORT's grid: every Conv2d
and Linear runs on fake-quantized weights (per output channel, symmetric int8, scale = max|w| / 127, what
quantize_static's per-channel S8 weights use) and fake-quantized inputs (uint8, per tensor, ranges observed as
an exponential moving average), with straight-through gradients (torch's fake_quantize ops). The file is then
made exactly as the PTQ path makes it: FP32 export, quant_pre_process (it folds BatchNorm), quantize_static QDQ
U8S8 with calibration, the YOLO head's decode kept float.

Why BatchNorm may stay unfolded while training: per-channel symmetric quantization is invariant to scaling an
output channel, and folding BatchNorm scales each output channel of its convolution; so weights snapped to the
grid before folding land on the same int8 values after it (`snap_weights`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..models.hooks import TrainHook

WEIGHT_QMAX = 127  # symmetric int8 weights: [-127, 127], as ONNX Runtime quantizes them
ACT_QMAX = 255  # uint8 activations
MOMENTUM = 0.01  # of the activation range's moving average


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """One scale per output channel: max|w| / 127 (a channel of zeros, as pruning leaves, gets a harmless 1)."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1)
    return torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax))


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    scale = weight_scale(weight).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    quantized = torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)
    return quantized.to(weight.dtype)


def _activation_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point of the range [low, high], widened to hold 0 (as ONNX Runtime does)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / ACT_QMAX, 1e-8)
    return scale, int(min(max(round(-low / scale), 0), ACT_QMAX))


class _FakeQuantMixin:
    """Shared by the fake-quantized Conv2d and Linear: an observed input range, fake-quantized input and weight.

    The range lives in non-persistent buffers, so the module's state_dict (what checkpoints, EMA and rebuilds
    read) is the plain layer's; FakeQuant.state_dict() carries the ranges through epoch checkpoints.
    """

    _rr_low: torch.Tensor
    _rr_high: torch.Tensor
    _rr_seen: torch.Tensor

    def _rr_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # type: ignore[attr-defined]
            with torch.no_grad():
                low, high = x.detach().min().float(), x.detach().max().float()
                if bool(self._rr_seen):
                    low = self._rr_low + MOMENTUM * (low - self._rr_low)
                    high = self._rr_high + MOMENTUM * (high - self._rr_high)
                self._rr_low.copy_(low)
                self._rr_high.copy_(high)
                self._rr_seen.fill_(True)
        if not bool(self._rr_seen):
            return x
        scale, zero = _activation_qparams(float(self._rr_low), float(self._rr_high))
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, ACT_QMAX).to(x.dtype)


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._rr_quant_input(x), fake_quant_weight(self.weight), self.bias)


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rr_quant_input(x), fake_quant_weight(self.weight), self.bias)


_SWAP: dict[type, type] = {nn.Conv2d: FakeQuantConv2d, nn.Linear: FakeQuantLinear}
_PLAIN: dict[type, type] = {v: k for k, v in _SWAP.items()}


def quantizable(model: nn.Module, keep_float: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """The layers QAT fake-quantizes: every plain Conv2d and Linear not named by a `keep_float` part."""
    return {
        name: m
        for name, m in model.named_modules()
        if type(m) in _SWAP and not any(part in name.split(".") for part in keep_float)
    }


class FakeQuant(TrainHook):
    """Switches the training model's layers to their fake-quantized classes when training starts (after a
    resume is restored, so a resumed model gets its saved ranges back) and keeps their input ranges in the
    hook state the trainers save with every epoch checkpoint."""

    name = "fake-quant"

    def __init__(self, keep_float: tuple[str, ...] = ()):
        self.keep_float = keep_float
        self.ranges: dict[str, list[float]] = {}  # layer name -> [low, high], from a resumed state
        self.model: Any = None

    def on_start(self, model: nn.Module, start_epoch: int, epochs: int) -> None:
        self.model = model
        for name, module in quantizable(model, self.keep_float).items():
            device = module.weight.device
            module.__class__ = _SWAP[type(module)]
            low, high = self.ranges.get(name, [0.0, 0.0])
            module.register_buffer("_rr_low", torch.tensor(low, device=device), persistent=False)
            module.register_buffer("_rr_high", torch.tensor(high, device=device), persistent=False)
            module.register_buffer("_rr_seen", torch.tensor(name in self.ranges, device=device), persistent=False)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"qat_layers": float(len(self._current()))}

    def _current(self) -> dict[str, list[float]]:
        if self.model is None:
            return dict(self.ranges)
        return {
            name: [float(m._rr_low), float(m._rr_high)]
            for name, m in self.model.named_modules()
            if isinstance(m, _FakeQuantMixin) and bool(m._rr_seen)
        }

    def state_dict(self) -> dict[str, Any]:
        return {"ranges": self._current()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranges = {k: [float(v[0]), float(v[1])] for k, v in state.get("ranges", {}).items()}


def finish(model: nn.Module, keep_float: tuple[str, ...] = ()) -> nn.Module:
    """The trained model as plain layers whose weights lie on the int8 grid (`snap_weights`), ready for export."""
    for module in model.modules():
        if type(module) in _PLAIN:
            for buffer in ("_rr_low", "_rr_high", "_rr_seen"):
                module._buffers.pop(buffer, None)
            module.__class__ = _PLAIN[type(module)]
    snap_weights(model, keep_float)
    return model


@torch.no_grad()
def snap_weights(model: nn.Module, keep_float: tuple[str, ...] = ()) -> None:
    """Replace each quantizable layer's weight by its fake-quantized value: ONNX Runtime's per-channel
    quantization of the exported (BatchNorm-folded) weight then gives exactly the integers training saw."""
    for module in quantizable(model, keep_float).values():
        module.weight.copy_(fake_quant_weight(module.weight))
