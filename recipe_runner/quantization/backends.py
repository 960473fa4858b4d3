"""Quantization backends by name; each is imported only when used (OpenVINO is an optional extra)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from ._request import QuantizeRequest


@dataclass(frozen=True)
class Backend:
    implementation: str  # "module:function(request) -> None", relative to this package
    packages: tuple[str, ...]  # import names that must be installed
    extra: str = ""  # the pip extra that installs them
    modes: tuple[str, ...] = ("int8-static", "int8-dynamic", "fp16")

    def quantize(self, request: QuantizeRequest) -> None:
        module, _, function = self.implementation.partition(":")
        getattr(importlib.import_module(module, __package__), function)(request)


BACKENDS: Registry[Backend] = Registry("quantization backend")
# int8-qat: fine-tuned with fake quantization (quantization/qat.py), then quantized as int8-static
BACKENDS.register("onnxruntime")(
    Backend("._onnxruntime:quantize", ("onnxruntime",), modes=("int8-static", "int8-dynamic", "fp16", "int8-qat"))
)
# NNCF post-training quantization, the CPU INT8 path Ultralytics itself uses for OpenVINO
BACKENDS.register("openvino")(
    Backend("._openvino:quantize", ("openvino", "nncf"), extra="openvino", modes=("int8-static",))
)


def missing_backend(name: str) -> str | None:
    """A message saying how to install the backend's packages, or None when they are importable."""
    backend = BACKENDS.get(name)
    missing = [p for p in backend.packages if importlib.util.find_spec(p) is None]
    if not missing:
        return None
    how = f"pip install 'recipe-runner[{backend.extra}]'" if backend.extra else f"pip install {' '.join(missing)}"
    return f"backend '{name}' needs {', '.join(missing)}, which is not installed: {how}"
