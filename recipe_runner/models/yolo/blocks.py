"""A C2f replacement that dependency-graph pruning can follow, at a stable import path.

Ultralytics' C2f (and YOLO11's C3k2, a C2f subclass) runs one 1x1 convolution and
splits its output with `chunk`. torch-pruning cannot map pruned channels through
that split (IndexError in importance estimation), so each block is swapped for
`SplitC2f`, which computes the two halves with two separate 1x1 convolutions
holding exactly the same weights. The output is numerically identical.

`SplitC2f` deliberately does not subclass C2f: Ultralytics' exporter switches
every C2f instance to `forward_split`, which reads the stale `self.c` after
pruning. Ultralytics pickles the module tree into its own last.pt/best.pt, so
this class must keep this import path (and its path before models/yolo/ was a
package, recipe_runner.models._yolo_blocks, stays importable as a shim).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class SplitC2f(nn.Module):
    """C2f with `cv1` split into `cv0` (first half) and `cv1` (second half); `cv2` and `m` are the original's."""

    def __init__(self, cv0: nn.Module, cv1: nn.Module, cv2: nn.Module, m: nn.ModuleList):
        super().__init__()
        self.cv0 = cv0
        self.cv1 = cv1
        self.cv2 = cv2
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(block(y[-1]) for block in self.m)
        return self.cv2(torch.cat(y, 1))


def _half(conv: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an Ultralytics Conv (conv + bn + act) keeping output channels [start, stop).

    deepcopy keeps BatchNorm's eps and momentum (trained Ultralytics models use eps 1e-3) and the train/eval mode.
    """
    half = copy.deepcopy(conv)
    with torch.no_grad():
        half.conv.weight = nn.Parameter(conv.conv.weight[start:stop].clone())
        if conv.conv.bias is not None:
            half.conv.bias = nn.Parameter(conv.conv.bias[start:stop].clone())
        half.conv.out_channels = stop - start
        bn = getattr(conv, "bn", None)
        if bn is not None:
            half.bn.weight = nn.Parameter(bn.weight[start:stop].clone())
            half.bn.bias = nn.Parameter(bn.bias[start:stop].clone())
            half.bn.running_mean = bn.running_mean[start:stop].clone()
            half.bn.running_var = bn.running_var[start:stop].clone()
            half.bn.num_features = stop - start
    return half


def split_c2f(block: nn.Module) -> SplitC2f:
    """The equivalent SplitC2f for one C2f/C3k2 block, carrying Ultralytics' graph attributes (f, i, type, np)."""
    c = block.cv1.conv.out_channels // 2
    new = SplitC2f(_half(block.cv1, 0, c), _half(block.cv1, c, 2 * c), block.cv2, block.m)
    for attr in ("f", "i", "type", "np"):
        if hasattr(block, attr):
            setattr(new, attr, getattr(block, attr))
    new.train(block.training)
    return new


def replace_c2f(model: nn.Module) -> int:
    """Swap every C2f (C3k2 included) inside `model` for a SplitC2f, in place; returns how many were swapped."""
    from ultralytics.nn.modules.block import C2f

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f) and type(child).forward is C2f.forward:
                setattr(parent, name, split_c2f(child))
                count += 1
    return count
