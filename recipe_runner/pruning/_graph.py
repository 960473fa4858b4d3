"""What every dependency-graph method shares: the model made traceable, the layers never pruned, the pruner built
(with a message that says what to do when tracing fails), and gradients gathered without changing the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..registry import did_you_mean


def prepare(model, family):
    """The family's traceable form of `model` (e.g. YOLO's split C2f), in eval mode, every parameter trainable."""
    model = family.prepare_for_pruning(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def ignored_layers(model, family, config) -> list:
    """The family's output head (with `prune_head`, only its output layers) plus the recipe's `ignored:` names
    (a typo is an error, not a silent no-op)."""
    names: list[str] = config.ignored
    ignored = list(family.head_outputs(model) if config.prune_head else family.output_layers(model))
    named = dict(model.named_modules())
    for name in names:
        if name not in named:
            raise ValueError(f"ignored layer '{name}' is not a module of the model{did_you_mean(name, named)}")
        ignored.append(named[name])
    return ignored


def build_pruner(model, family, config, importance, pruning_ratio: float, **options: Any):
    """torch-pruning's BasePruner on `model` (already prepared); `options` go to BasePruner as they are."""
    import torch_pruning as tp

    class Pruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            return rounded_prune_count(n_pruned, current_channels, round_to)

    example = family.example_inputs(model, config.imgsz)
    ignored = ignored_layers(model, family, config)
    with _explained_tracing():
        return Pruner(
            model, example, importance=importance, pruning_ratio=pruning_ratio, ignored_layers=ignored, **options
        )


def rounded_prune_count(n_pruned: int, current_channels: int, round_to: int) -> int:
    """Channels to remove so that a multiple of `round_to` stays, and at least one multiple.

    torch-pruning 1.6 rounds the kept count down, to 0 when fewer than `round_to` would stay; pruning every
    channel is then refused and the layer is left whole. So with round_to: 16, ratio 0.9 kept 0.89 of YOLOv8n's
    MACs and ratio 0.5 kept 0.47: cost rose with the ratio, and a search over both found the big model "pruned
    more". Keeping one multiple makes cost fall with the ratio, as the ratio promises.
    """
    kept = (current_channels - n_pruned) // round_to * round_to
    return max(current_channels - max(kept, round_to), 0)


def dependency_graph(model, family, config) -> tuple[Any, list]:
    """torch-pruning's dependency graph of `model` (already prepared), and every module never to prune (the
    ignored layers and all their submodules, as BasePruner expands them)."""
    import torch_pruning as tp

    example = family.example_inputs(model, config.imgsz)
    ignored = [m for layer in ignored_layers(model, family, config) for m in layer.modules()]
    with _explained_tracing():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example), ignored


@contextmanager
def _explained_tracing() -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # torch-pruning's tracer meets an op it cannot follow
        raise RuntimeError(
            f"torch-pruning could not build the dependency graph of this model ({type(exc).__name__}: {exc}). "
            "Layers that reshape channels (channel shuffle, attention heads) can be kept whole by listing them in "
            "`ignored:`, or use method: l1-unstructured"
        ) from exc


def has_batchnorm(model) -> bool:
    import torch.nn as nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def gather_gradients(
    model, family, data, config, batches: int, after_backward: Callable[[], None] | None = None
) -> None:
    """Backward passes over `batches` training batches, leaving the model's weights and BatchNorm statistics as
    they were: the loss needs train mode, which moves BatchNorm running stats, and scoring must not change what
    it scores. `after_backward` runs after each batch's backward (e.g. to square per-batch gradients)."""
    import torch

    model.zero_grad()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    family.accumulate_gradients(model, data, config, batches, after_backward=after_backward)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])


def squared_gradients(model, family, data, config, batches: int) -> None:
    """Leave in every `.grad` the mean over batches of the squared batch gradient: the empirical Fisher diagonal
    that GroupHessianImportance reads as its Hessian estimate (torch-pruning 1.6.1's own `accumulate_grad` keeps
    only the last call's gradients, so the average is taken here)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    total = {p: torch.zeros_like(p) for p in params}
    count = 0

    def add_square() -> None:
        nonlocal count
        count += 1
        for p in params:
            if p.grad is not None:
                total[p] += p.grad.detach() ** 2
                p.grad = None

    gather_gradients(model, family, data, config, batches, after_backward=add_square)
    for p in params:
        p.grad = total[p] / max(count, 1)


def step(pruner, model) -> None:
    """One pruner step (the importances read gradients), then the gradients dropped."""
    import torch

    with torch.enable_grad():
        pruner.step()
    model.zero_grad(set_to_none=True)
