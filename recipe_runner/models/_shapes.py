"""Save and restore a (possibly pruned) module as plain data: no pickled classes, so
`torch.load(weights_only=True)` can read it.

Pruning changes tensor shapes and a few integer attributes (in_channels,
num_features, ...). We record both, then rebuild the unpruned architecture and
resize it to match.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        found = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(module).items()
                 if not k.startswith("_") and k != "training" and _plain(v)}
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
                raise ValueError(f"checkpoint sets attribute '{name}.{key}', which is not a plain attribute of the model")
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)
    model.load_state_dict(state_dict, strict=True)
    return model
