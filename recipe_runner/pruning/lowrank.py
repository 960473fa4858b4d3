"""Low-rank decomposition (`method: low-rank`): each Linear and Conv2d replaced by a product of smaller layers.

Linear: truncated SVD, W = (U sqrt(S)) (sqrt(S) V^T), two Linear layers.
Conv2d k x k: Tucker-2 by HOSVD (Kim et al. 2016): the left singular vectors of the output- and input-channel
unfoldings of the kernel are the two 1x1 factor convolutions, the kernel projected onto them the k x k core, which
keeps the original stride, padding and dilation. Conv2d 1x1: SVD of the C_out x C_in matrix, two 1x1 convolutions.
Grouped/depthwise convolutions, the family's output layers, `ignored:` names, and every layer whose factors would
not cost fewer MACs than it does now are left as they are.

Steps: step k of N keeps `keep^(k/N)` (keep = rank_ratio) of each layer's full rank, counted on the original
layer, so N steps compound to rank_ratio as channel pruning's steps compound to its ratio; an already decomposed
layer is multiplied back out and decomposed again at the smaller rank. With `energy` each step keeps the smallest
ranks that hold `energy^(1/N)` of the current (fine-tuned) layer's squared singular values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ._base import METHODS, PruneConfigBase, PruningMethod, StepPlan
from ._graph import ignored_layers

DEFAULT_RANK_RATIO = 0.5


class LowRankConfig(PruneConfigBase):
    """Replace layers by low-rank factors. `ratio` is not a key of this method: it is set to 1 - rank_ratio
    (or 1 - energy), the fraction of rank (or energy) removed, which the prune loop logs as step/ratio."""

    method: Literal["low-rank"] = "low-rank"
    ratio: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="not a key of low-rank (an error if it differs): set to "
        "1 - rank_ratio, or 1 - energy, the fraction removed",
    )
    rank_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=f"keep this fraction of each layer's rank (default {DEFAULT_RANK_RATIO} unless energy is given)",
    )
    energy: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="instead of rank_ratio: keep the smallest rank whose singular values hold this fraction of "
        "each layer's squared singular-value energy",
    )
    min_rank: int = Field(1, ge=1, le=65_536, description="no factor narrower than this")

    @model_validator(mode="after")
    def _one_rank_target(self) -> LowRankConfig:
        # the target search varies a channel ratio; low-rank's knob is a rank fraction (not mapped yet)
        if self.target_macs is not None or self.target_params is not None:
            raise ValueError(
                "target_macs and target_params are not supported by method: low-rank yet; use rank_ratio or energy"
            )
        if self.rank_ratio is not None and self.energy is not None:
            raise ValueError("give rank_ratio or energy, not both")
        if self.rank_ratio is None and self.energy is None:
            self.rank_ratio = DEFAULT_RANK_RATIO
        kept = self.rank_ratio if self.rank_ratio is not None else self.energy
        assert kept is not None
        # a round trip of a validated config carries the derived ratio: only a different value is a mistake
        if "ratio" in self.model_fields_set and abs(self.ratio - (1.0 - kept)) > 1e-9:
            raise ValueError(
                "ratio is not a key of method: low-rank; use rank_ratio (fraction of each layer's rank kept) or energy"
            )
        self.ratio = 1.0 - kept
        return self


@dataclass(frozen=True)
class LayerRanks:
    """One layer's outcome in a step: decomposed (or decomposed again) at these ranks, or left as it was."""

    name: str
    kind: str  # conv-tucker2 | conv-svd | linear-svd
    shape: str  # e.g. 64x64x3x3
    full: list[int]
    ranks: list[int]
    macs_before: int  # per output position (conv) or per sample (linear)
    macs_after: int
    decomposed: bool


def _svd(matrix):
    """Singular vectors and values in float64 (exact enough that full rank reproduces the layer)."""
    import torch

    u, s, vh = torch.linalg.svd(matrix.detach().to(torch.float64), full_matrices=False)
    return u, s, vh


def _left(matrix):
    """Left singular vectors and singular values of a matrix, through the eigenvectors of its rows x rows Gram
    matrix: an unfolding of a k x k kernel is about k^2 times wider than tall, and this costs a fraction of a full
    SVD. The basis is complete and orthonormal, so full rank still reproduces the layer."""
    import torch

    matrix = matrix.detach().to(torch.float64)
    values, vectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending: the largest singular values come last
    return vectors.flip(1), values.flip(0).clamp_min(0).sqrt()


def _bases(weight):
    """(u_in, s_in, u_out, s_out) of a k x k kernel's input- and output-channel unfoldings (HOSVD)."""
    c_out, c_in = weight.shape[:2]
    u_in, s_in = _left(weight.transpose(0, 1).reshape(c_in, -1))
    u_out, s_out = _left(weight.reshape(c_out, -1))
    return u_in, s_in, u_out, s_out


def _rank(singular, full: int, config: LowRankConfig, keep: float) -> int:
    """The rank kept of one unfolding: a fraction of its full rank, or the smallest holding `keep` of its energy."""
    if config.energy is not None:
        energy = singular.pow(2)
        share = energy.cumsum(0) / energy.sum().clamp_min(1e-30)
        rank = int((share < keep - 1e-12).sum()) + 1
    else:
        rank = math.ceil(keep * full - 1e-9)
    return max(1, min(full, max(config.min_rank, rank)))


def _conv_macs(c_in: int, c_out: int, kernel: int, stride: int, ranks: list[int] | None) -> int:
    """MACs per output position: dense, or Tucker-2 (`reduce` runs at the input resolution: stride^2 positions per
    output position) / 1x1 SVD (its `reduce` takes the stride itself)."""
    if ranks is None:
        return c_in * c_out * kernel
    if len(ranks) == 1:
        return ranks[0] * (c_in + c_out)
    r_in, r_out = ranks
    return c_in * r_in * stride + r_in * r_out * kernel + r_out * c_out


def _current_macs(module, c_in: int, c_out: int, kernel: int, stride: int) -> int:
    from ..models.lowrank_layers import LowRankConv2d

    return _conv_macs(c_in, c_out, kernel, stride, module.ranks if isinstance(module, LowRankConv2d) else None)


def decompose_linear(linear, rank: int):
    """LowRankLinear equal to `linear` up to its singular values past `rank` (exact at full rank)."""
    import torch

    from ..models.lowrank_layers import LowRankLinear

    u, s, vh = _svd(linear.weight)
    root = s[:rank].sqrt()
    new = LowRankLinear.empty(linear, rank)
    with torch.no_grad():
        new.reduce.weight.copy_(root[:, None] * vh[:rank])
        new.expand.weight.copy_(u[:, :rank] * root)
        if linear.bias is not None:
            new.expand.bias.copy_(linear.bias)
    new.train(linear.training)
    return new


def decompose_conv(conv, ranks: list[int], wrapper=None, bases=None):
    """LowRankConv2d equal to `conv` up to the truncated ranks: [r] for a 1x1 convolution (SVD), [r_in, r_out]
    otherwise (Tucker-2 by HOSVD). `wrapper`: the conv+bn+act module holding `conv`, kept around the expand factor.
    `bases`: _bases(conv.weight) when the caller has it already."""
    import torch

    from ..models.lowrank_layers import LowRankConv2d

    weight = conv.weight.detach().to(torch.float64)
    new = LowRankConv2d.empty(conv, ranks[0], ranks[-1], wrapper=wrapper)
    with torch.no_grad():
        if len(ranks) == 1:
            u, s, vh = _svd(weight[:, :, 0, 0])
            root, r = s[: ranks[0]].sqrt(), ranks[0]
            new.reduce.weight.copy_((root[:, None] * vh[:r])[:, :, None, None])
            new.expand_conv.weight.copy_((u[:, :r] * root)[:, :, None, None])
        else:
            r_in, r_out = ranks
            u_in, _, u_out, _ = bases if bases is not None else _bases(weight)
            u_in, u_out = u_in[:, :r_in], u_out[:, :r_out]
            new.reduce.weight.copy_(u_in.T[:, :, None, None])
            new.core.weight.copy_(torch.einsum("oihw,or,is->rshw", weight, u_out, u_in))
            new.expand_conv.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            new.expand_conv.bias.copy_(conv.bias)
    new.train(conv.training)
    return new


def _conv_ranks(conv, config: LowRankConfig, keep: float):
    """(full ranks, kept ranks, bases or None) of a convolution: one rank for 1x1, (input, output) for Tucker-2."""
    import torch

    weight = conv.weight.detach().to(torch.float64)
    c_out, c_in, kh, kw = weight.shape
    if (kh, kw) == (1, 1):
        full = min(c_out, c_in)
        return [full], [_rank(torch.linalg.svdvals(weight[:, :, 0, 0]), full, config, keep)], None
    full_in, full_out = min(c_in, c_out * kh * kw), min(c_out, c_in * kh * kw)
    bases = _bases(weight)
    return [full_in, full_out], [_rank(bases[1], full_in, config, keep), _rank(bases[3], full_out, config, keep)], bases


def _targets(model, family, config: LowRankConfig) -> list[tuple[str, Any, str]]:
    """(name, module, kind) of every layer to consider: plain Linear / ungrouped Conv2d, an Ultralytics-style
    conv+bn+act wrapper around one (decomposed inside, BatchNorm kept after the expand factor), or a layer this
    method decomposed before. The family's output layers and `ignored:` (and everything inside them) are skipped."""
    from torch import nn

    from ..models.lowrank_layers import LowRankConv2d, LowRankLinear

    skipped = {id(m) for layer in ignored_layers(model, family, config) for m in layer.modules()}
    found: list[tuple[str, Any, str]] = []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in skipped or id(module) in inside or not name:
            continue
        if isinstance(module, (LowRankConv2d, LowRankLinear)):
            kind = "conv" if isinstance(module, LowRankConv2d) else "linear"
        elif _is_conv_wrapper(module):
            kind = "wrapped"
        elif type(module) is nn.Conv2d:
            kind = "conv"
        elif type(module) is nn.Linear:
            kind = "linear"
        else:
            continue
        inside.update(id(m) for m in module.modules())
        found.append((name, module, kind))
    return found


# Ultralytics' Conv (conv + bn + act), known by its class's qualified name so that this module (imported when a
# recipe is validated) never imports Ultralytics; its subclasses (DWConv, Conv2, ...) differ in forward and are not
# decomposed
_CONV_WRAPPER = ("ultralytics.nn.modules.conv", "Conv")


def _is_conv_wrapper(module) -> bool:
    from torch import nn

    kind = type(module)
    return (kind.__module__, kind.__qualname__) == _CONV_WRAPPER and type(module.conv) is nn.Conv2d


def _plain_conv(module, kind: str):
    """(the equivalent dense Conv2d, the wrapper to keep around expand or None)."""
    from ..models.lowrank_layers import LowRankConv2d

    if isinstance(module, LowRankConv2d):
        return module.dense(), (module.expand if module.wrapped else None)
    if kind == "wrapped":
        return module.conv, module
    return module, None


def decompose_layer(name: str, module, kind: str, config: LowRankConfig, keep: float):
    """(replacement or None, LayerRanks) for one layer at the fraction `keep` (of rank, or of energy)."""
    import torch

    from ..models.lowrank_layers import LowRankLinear

    if kind == "linear":
        linear = module.dense() if isinstance(module, LowRankLinear) else module
        full = min(linear.in_features, linear.out_features)
        rank = _rank(torch.linalg.svdvals(linear.weight.detach().double()), full, config, keep)
        before = (
            module.ranks[0] * (linear.in_features + linear.out_features)
            if module is not linear
            else linear.in_features * linear.out_features
        )
        after = rank * (linear.in_features + linear.out_features)
        row = LayerRanks(
            name,
            "linear-svd",
            f"{linear.out_features}x{linear.in_features}",
            [full],
            [rank],
            before,
            after,
            after < before,
        )
        return (decompose_linear(linear, rank) if row.decomposed else None), row
    conv, wrapper = _plain_conv(module, kind)
    c_out, c_in, kh, kw = conv.weight.shape
    shape = f"{c_out}x{c_in}x{kh}x{kw}"
    if conv.groups != 1:
        return None, LayerRanks(name, "grouped (skipped)", shape, [], [], 0, 0, False)
    full, ranks, bases = _conv_ranks(conv, config, keep)
    stride = conv.stride[0] * conv.stride[1]
    before = _current_macs(module, c_in, c_out, kh * kw, stride)
    after = _conv_macs(c_in, c_out, kh * kw, stride, ranks)
    row = LayerRanks(
        name, "conv-svd" if len(ranks) == 1 else "conv-tucker2", shape, full, ranks, before, after, after < before
    )
    return (decompose_conv(conv, ranks, wrapper, bases) if row.decomposed else None), row


def decompose_model(model, family, config: LowRankConfig, plan: StepPlan) -> list[LayerRanks]:
    """Decompose every eligible layer of `model` in place for this step; the per-layer table."""
    from ..models.lowrank_layers import carry_graph_attributes

    # rank_ratio: the cumulative share of the original rank; energy: this step's share of the current energy
    keep = 1.0 - plan.cumulative if config.energy is None else 1.0 - plan.step_ratio
    modules = dict(model.named_modules())
    rows = []
    for name, module, kind in _targets(model, family, config):
        new, row = decompose_layer(name, module, kind, config, keep)
        rows.append(row)
        if new is not None:
            owner, _, leaf = name.rpartition(".")
            carry_graph_attributes(module, new)
            setattr(modules[owner], leaf, new)
    return rows


def prune_step(model, family, data, config: LowRankConfig, plan: StepPlan):
    from ..models.lowrank_layers import LowRankConv2d, LowRankLinear

    model.eval()
    decompose_model(model, family, config, plan)
    # a later step may find nothing cheaper (ranks at min_rank); only a model with no low-rank layer at all fails
    if not any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in model.modules()):
        raise ValueError(
            "method: low-rank found no layer whose factors would cost fewer MACs at this rank "
            "(rank_ratio or energy too high, or every layer is grouped, ignored or the output head)"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def layer_table(model) -> list[dict[str, Any]]:
    """Every low-rank layer of `model`: its name, dense shape, full and kept ranks and the share of the dense
    layer's MACs its factors cost (read from the model itself, so it holds after fine-tuning and resume)."""
    from ..models.lowrank_layers import LowRankConv2d, LowRankLinear

    rows = []
    for name, module in model.named_modules():
        if isinstance(module, LowRankLinear):
            c_out, c_in = module.expand.out_features, module.reduce.in_features
            full = [min(c_in, c_out)]
            kind = "linear-svd"
            shape = f"{c_out}x{c_in}"
            ratio = module.ranks[0] * (c_in + c_out) / (c_in * c_out)
        elif isinstance(module, LowRankConv2d):
            dense = module.dense()
            c_out, c_in, kh, kw = dense.weight.shape
            k, stride = kh * kw, dense.stride[0] * dense.stride[1]
            full = [min(c_out, c_in)] if k == 1 else [min(c_in, c_out * k), min(c_out, c_in * k)]
            kind, shape = ("conv-svd" if k == 1 else "conv-tucker2"), f"{c_out}x{c_in}x{kh}x{kw}"
            ratio = _conv_macs(c_in, c_out, k, stride, module.ranks) / _conv_macs(c_in, c_out, k, stride, None)
        else:
            continue
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "shape": shape,
                "full_rank": full,
                "rank": module.ranks,
                "macs_ratio": round(ratio, 4),
            }
        )
    return rows


METHODS.register("low-rank")(
    PruningMethod(
        LowRankConfig,
        prune_step,
        structured=True,
        layer_table=layer_table,
        cost_targets=False,
        description="low-rank decomposition: SVD (Linear, 1x1) and Tucker-2 (k x k convolutions)",
    )
)
