"""The layers low-rank decomposition puts in place of a Linear or a Conv2d, at a stable import path.

Why here and why plain `nn.Sequential`s of standard layers: Ultralytics pickles the module tree into its own
last.pt/best.pt (so the class must keep this import path), the stage checkpoint rebuilds them from plain data
(models/_shapes.py records each one by name and ranks), and ONNX export, INT8 quantization and torch-pruning's
MAC counter see nothing but ordinary Conv/Gemm layers.

`LowRankConv2d`: `reduce` (1x1, C_in -> r_in), then `core` (k x k, r_in -> r_out, the original stride, padding and
dilation), then `expand` (1x1, r_out -> C_out, the original bias). A 1x1 convolution has no core: `reduce` takes its
stride and padding, `expand` its bias (a plain matrix SVD). Where the original sat inside a conv+bn+act wrapper
(Ultralytics' `Conv`), `expand` is that wrapper around the 1x1 convolution, so Ultralytics' BatchNorm fusion still
finds a Conv2d followed by its BatchNorm.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

# Ultralytics' graph bookkeeping on a top-level layer (which inputs it reads, its index): a replacement carries it
GRAPH_ATTRIBUTES = ("f", "i", "type", "np")


class LowRankLinear(nn.Sequential):
    """Linear(in, out) as Linear(in, rank, no bias) then Linear(rank, out, the original bias)."""

    reduce: nn.Linear
    expand: nn.Linear

    def __init__(self, reduce: nn.Linear, expand: nn.Linear):
        super().__init__(OrderedDict(reduce=reduce, expand=expand))

    @classmethod
    def empty(cls, like: nn.Linear, rank: int) -> LowRankLinear:
        """Factors shaped for `like` at `rank`, weights uninitialised (filled by decomposition or a checkpoint)."""
        kw: dict[str, Any] = {"device": like.weight.device, "dtype": like.weight.dtype}
        return cls(
            nn.Linear(like.in_features, rank, bias=False, **kw),
            nn.Linear(rank, like.out_features, bias=like.bias is not None, **kw),
        )

    @property
    def ranks(self) -> list[int]:
        return [self.reduce.out_features]

    def dense(self) -> nn.Linear:
        """The equivalent single Linear (the product of the factors)."""
        reduce, expand = self.reduce, self.expand
        dense = nn.Linear(
            reduce.in_features,
            expand.out_features,
            bias=expand.bias is not None,
            device=reduce.weight.device,
            dtype=reduce.weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(expand.weight @ reduce.weight)
            if expand.bias is not None:
                dense.bias.copy_(expand.bias)
        return dense


class LowRankConv2d(nn.Sequential):
    """Conv2d as reduce (1x1) -> core (k x k; absent for a 1x1 original) -> expand (1x1, or its conv+bn+act wrapper)."""

    reduce: nn.Conv2d
    core: nn.Conv2d  # absent (not in _modules) for a 1x1 original
    expand: nn.Module

    def __init__(self, reduce: nn.Conv2d, core: nn.Conv2d | None, expand: nn.Module):
        parts: OrderedDict[str, nn.Module] = OrderedDict(reduce=reduce)
        if core is not None:
            parts["core"] = core
        parts["expand"] = expand
        super().__init__(parts)

    @classmethod
    def empty(cls, like: nn.Conv2d, r_in: int, r_out: int, wrapper: nn.Module | None = None) -> LowRankConv2d:
        """Factors shaped for the convolution `like` at ranks (r_in, r_out); weights uninitialised. A 1x1 `like`
        has one rank (r_in is used, r_out ignored). `wrapper`: a module whose `.conv` is `like` (conv+bn+act); a copy
        of it, around the new 1x1 expand convolution, becomes `expand`."""
        kw: dict[str, Any] = {"device": like.weight.device, "dtype": like.weight.dtype}
        pointwise = tuple(like.kernel_size) == (1, 1)
        if pointwise:
            reduce = nn.Conv2d(
                like.in_channels,
                r_in,
                1,
                stride=like.stride,
                padding=like.padding,
                dilation=like.dilation,
                bias=False,
                padding_mode=like.padding_mode,
                **kw,
            )
            core, inner = None, r_in
        else:
            reduce = nn.Conv2d(like.in_channels, r_in, 1, bias=False, **kw)
            core = nn.Conv2d(
                r_in,
                r_out,
                like.kernel_size,
                stride=like.stride,
                padding=like.padding,
                dilation=like.dilation,
                bias=False,
                padding_mode=like.padding_mode,
                **kw,
            )
            inner = r_out
        conv = nn.Conv2d(inner, like.out_channels, 1, bias=like.bias is not None, **kw)
        if wrapper is None:
            return cls(reduce, core, conv)
        around = copy.deepcopy(wrapper)
        around.conv = conv
        return cls(reduce, core, around)

    @property
    def wrapped(self) -> bool:
        return not isinstance(self.expand, nn.Conv2d)

    @property
    def expand_conv(self) -> nn.Conv2d:
        conv = self.expand._modules["conv"] if self.wrapped else self.expand
        assert isinstance(conv, nn.Conv2d)
        return conv

    @property
    def ranks(self) -> list[int]:
        return [self.reduce.out_channels] + ([self.core.out_channels] if "core" in self._modules else [])

    def dense(self) -> nn.Conv2d:
        """The equivalent single Conv2d (the product of the factors; a wrapper's BatchNorm and activation are not
        part of it)."""
        reduce, expand = self.reduce, self.expand_conv
        core = self._modules.get("core")
        geometry = core if core is not None else reduce
        dense = nn.Conv2d(
            reduce.in_channels,
            expand.out_channels,
            geometry.kernel_size,
            stride=geometry.stride,
            padding=geometry.padding,
            dilation=geometry.dilation,
            bias=expand.bias is not None,
            padding_mode=geometry.padding_mode,
            device=reduce.weight.device,
            dtype=reduce.weight.dtype,
        )
        u_in = reduce.weight[:, :, 0, 0]  # r_in x C_in
        u_out = expand.weight[:, :, 0, 0]  # C_out x r_out (or r_in without a core)
        with torch.no_grad():
            if core is None:
                dense.weight.copy_((u_out @ u_in)[:, :, None, None])
            else:
                dense.weight.copy_(torch.einsum("or,rshw,si->oihw", u_out, core.weight, u_in))
            if expand.bias is not None:
                dense.bias.copy_(expand.bias)
        return dense


def carry_graph_attributes(source: nn.Module, target: nn.Module) -> None:
    """Copy Ultralytics' per-layer graph attributes (plain values), so a replaced top-level layer still routes."""
    for name in GRAPH_ATTRIBUTES:
        if name in vars(source):
            setattr(target, name, vars(source)[name])
