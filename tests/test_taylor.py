"""Taylor importance needs a few backward passes in train mode; scoring must not change what it scores."""

from __future__ import annotations

from pathlib import Path

import torch


def test_taylor_scoring_leaves_batchnorm_statistics_alone(workspace: Path):
    from recipe_runner.data import resolve_data
    from recipe_runner.models.torchvision import TorchvisionFamily
    from recipe_runner.pruning import METHODS, plan_steps

    family, data = TorchvisionFamily(), resolve_data("builtin:shapes-cls?train=32&val=8&imgsz=32", "classify")
    model = family.build("resnet18", data, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct, trained-looking statistics: pruning keeps a subset of them, unchanged
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
    before = {
        name: set(bn.running_mean.tolist())
        for name, bn in model.named_modules()
        if isinstance(bn, torch.nn.BatchNorm2d)
    }
    method = METHODS.get("depgraph")
    config = method.config(method="depgraph", importance="taylor", imgsz=32, batch=8, ratio=0.3, taylor_batches=2)
    pruned = method.prune_step(model, family, data, config, plan_steps(0.3, 1)[0])
    after = {
        name: bn.running_mean.tolist() for name, bn in pruned.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)
    }
    assert sum(len(v) for v in after.values()) < sum(len(v) for v in before.values())  # it did prune
    for name, values in after.items():
        assert set(values) <= before[name], f"{name}: running statistics changed while scoring"
