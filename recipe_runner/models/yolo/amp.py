"""Ultralytics' AMP check, without its download.

Before training on a GPU with `amp: True`, Ultralytics' `check_amp` downloads yolo26n.pt and compares
its fp32 and fp16 detections on a sample image; offline, that download fails and AMP stays on
unchecked. Ours checks the model under training itself: one fixed input, run in fp32 and under fp16
autocast, must give outputs within Ultralytics' own tolerance (0.5 absolute, on pixel boxes), else
AMP is switched off for the run with a warning. The runner's trainer installs it for the length of
`_setup_train` (see `offline_amp_check`), in its own process and in every DDP worker.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import torch
from torch import nn

_LOG = logging.getLogger("recipe_runner")
# Ultralytics compares boxes in pixels with this absolute tolerance (ultralytics.utils.checks.check_amp)
ATOL = 0.5
CHECK_IMGSZ = 128
# GPUs on which fp16 training gives NaN losses, which one forward pass does not show; Ultralytics' check_amp
# refuses AMP on the same models
UNSAFE_GPUS = ("1630", "1650", "1660", "t400", "t550", "t600", "t1000", "t1200", "t2000", "k40m")


def amp_is_safe(model: nn.Module) -> bool:
    """Ultralytics' `check_amp(model)` contract: True to train with AMP. Only CUDA uses AMP."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    name = torch.cuda.get_device_name(device).lower()
    if any(model in name for model in UNSAFE_GPUS):
        _LOG.warning("AMP is off on %s (fp16 training there gives NaN losses); training in fp32", name)
        return False
    example = torch.rand(1, 3, CHECK_IMGSZ, CHECK_IMGSZ, generator=torch.Generator().manual_seed(0)).to(device)
    if outputs_agree(model, example, torch.float16):
        return True
    _LOG.warning("AMP check failed: fp16 autocast changes this model's outputs by more than %s; training in fp32", ATOL)
    return False


def outputs_agree(model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `model` gives finite outputs within ATOL of fp32 under `dtype` autocast on `example`'s device."""
    from ultralytics.utils.torch_utils import unwrap_model

    probe = copy.deepcopy(unwrap_model(model)).float().eval()
    with torch.no_grad():
        reference = _first_tensor(probe(example)).float()
        with torch.autocast(example.device.type, dtype=dtype):
            low = _first_tensor(probe(example)).float()
    return (
        bool(torch.isfinite(low).all())
        and low.shape == reference.shape
        and bool(torch.allclose(low, reference, atol=ATOL, rtol=0))
    )


def _first_tensor(output: object) -> torch.Tensor:
    """A detection model in eval mode returns (decoded predictions, raw maps); the decoded ones are compared."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"cannot compare model outputs of type {type(output).__name__}")
    return output


@contextlib.contextmanager
def offline_amp_check() -> Iterator[None]:
    """Ultralytics' trainer calls `check_amp` from its own module namespace: put ours there while it sets up."""
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.check_amp
    trainer_module.check_amp = amp_is_safe
    try:
        yield
    finally:
        trainer_module.check_amp = original
