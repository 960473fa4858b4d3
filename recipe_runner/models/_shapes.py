"""Save and restore a (possibly pruned) module as plain data: no pickled classes, so
`torch.load(weights_only=True)` can read it.

Pruning changes tensor shapes and a few integer attributes (in_channels,
num_features, ...). We record both, then rebuild the unpruned architecture and
resize it to match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..persistence.checkpoints import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

_PLAIN = (int, float, bool, str)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN) or value is None:
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Public plain-data attributes of every module (the ones pruning rewrites are among them)."""
    attrs: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        found = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and _plain(v)
        }
        if found:
            attrs[name] = found
    return attrs


def apply_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor], attrs: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize `model`'s parameters/buffers to the saved tensors' shapes, set saved attributes, load weights."""
    import torch
    from torch import nn

    modules = dict(model.named_modules())
    for key, tensor in state_dict.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is None:
            raise KeyError(f"checkpoint has '{key}' but the model has no module '{owner}'")
        if leaf in module._parameters and module._parameters[leaf] is not None:
            current = module._parameters[leaf]
            if current.shape != tensor.shape:
                module._parameters[leaf] = nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad)
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            if module._buffers[leaf].shape != tensor.shape:
                module._buffers[leaf] = torch.empty_like(tensor)
    for name, values in attrs.items():
        module = modules.get(name)
        if module is None:
            continue
        for key, value in values.items():
            # plain values over plain (or missing) attributes only: a checkpoint from a shared store must not replace
            # a method, a submodule or a dict such as YOLO's `yaml` (which is allow-listed on rebuild)
            current = getattr(module, key, None)
            if key.startswith("_") or not _plain(current) or not _plain(value):
                raise ValueError(
                    f"checkpoint sets attribute '{name}.{key}', which is not a plain attribute of the model"
                )
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)
    model.load_state_dict(state_dict, strict=True)
    return model


# Bounds for a decomposition record read from a checkpoint (someone else's store): far above any real layer
_MAX_RECORDS, _MAX_RANK = 100_000, 1 << 20


class DecompositionError(CheckpointError, ValueError):
    """A checkpoint's low-rank layer records do not fit the model: not trusted, nothing built from them."""


def decomposed_layers(model: nn.Module) -> list[dict[str, Any]]:
    """Every low-rank layer of `model` as plain data: where it sits, what it replaced and its ranks.

    Shapes and weights come from the state dict; this says which structure to put in place first."""
    from .lowrank_layers import LowRankConv2d, LowRankLinear

    records: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, LowRankConv2d):
            records.append({"name": name, "kind": "conv", "ranks": module.ranks, "wrapped": module.wrapped})
        elif isinstance(module, LowRankLinear):
            records.append({"name": name, "kind": "linear", "ranks": module.ranks, "wrapped": False})
    return records


def restore_decomposed(model: nn.Module, records: Any) -> nn.Module:
    """Replace the layers `records` (from decomposed_layers) name with empty low-rank layers, in place, so that
    apply_shapes can load the checkpoint's factors. Refuses anything but records of the expected form."""
    from torch import nn

    from .lowrank_layers import LowRankConv2d, LowRankLinear, carry_graph_attributes

    if not isinstance(records, list) or len(records) > _MAX_RECORDS:
        raise DecompositionError("checkpoint: 'decomposed' must be a list of low-rank layer records")
    for record in records:
        if not (
            isinstance(record, dict)
            and set(record) == {"name", "kind", "ranks", "wrapped"}
            and isinstance(record["name"], str)
            and record["kind"] in ("conv", "linear")
            and isinstance(record["wrapped"], bool)
            and isinstance(record["ranks"], list)
            and 1 <= len(record["ranks"]) <= 2
            and all(type(r) is int and 1 <= r <= _MAX_RANK for r in record["ranks"])
        ):
            raise DecompositionError(f"checkpoint: malformed low-rank layer record {str(record)[:120]}")
        modules = dict(model.named_modules())
        name, ranks = record["name"], record["ranks"]
        owner, _, leaf = name.rpartition(".")
        current, parent = modules.get(name), modules.get(owner)
        if current is None or parent is None or not leaf:
            raise DecompositionError(f"checkpoint decomposes '{name}', which is not a layer of the model")
        if record["kind"] == "linear" and type(current) is nn.Linear and len(ranks) == 1:
            new: nn.Module = LowRankLinear.empty(current, ranks[0])
        elif record["kind"] == "conv":
            conv = (
                current.conv if record["wrapped"] and isinstance(current._modules.get("conv"), nn.Conv2d) else current
            )
            if type(conv) is not nn.Conv2d or len(ranks) != (1 if tuple(conv.kernel_size) == (1, 1) else 2):
                raise DecompositionError(f"checkpoint decomposes '{name}' as a convolution, which it is not")
            new = LowRankConv2d.empty(conv, ranks[0], ranks[-1], wrapper=current if record["wrapped"] else None)
        else:
            raise DecompositionError(f"checkpoint decomposes '{name}' as a {record['kind']} layer, which it is not")
        carry_graph_attributes(current, new)
        new.train(current.training)
        setattr(parent, leaf, new)
    return model
