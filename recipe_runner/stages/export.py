"""export: write the parent model as ONNX and check ONNX Runtime agrees with PyTorch.

The stage's output is the .onnx file itself (no PyTorch checkpoint is written for it).
Its run logs the file's own accuracy under the family's metric names (top1, mAP50-95...)
next to the parent's (`parent_` + name) and the parent's MACs and params, so export
runs line up with the others in MLflow's compare view.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config_base import StageConfig
from ._base import STAGES, StageContext, StageOutput, StageType, file_metrics


class ExportConfig(StageConfig):
    type: Literal["export"] = "export"
    format: Literal["onnx"] = Field("onnx", description="export format")
    opset: int = Field(17, ge=11, le=23, description="ONNX opset")
    dynamic: bool = Field(False, description="dynamic batch dimension")
    simplify: bool = Field(False, description="simplify the graph with onnxslim")
    imgsz: int = Field(64, ge=16, le=4096)
    batch: int = Field(16, ge=1, description="batch size of the ONNX accuracy evaluation")
    workers: int = Field(0, ge=0, le=64)
    atol: float = Field(1e-3, gt=0, description="allowed |ONNX Runtime - PyTorch| is atol + rtol * max|PyTorch output|")
    rtol: float = Field(
        1e-4, ge=0, description="relative part of the tolerance (detection outputs are pixel coordinates)"
    )


def run_export(ctx: StageContext, config: ExportConfig) -> StageOutput:
    path = ctx.workdir / "model.onnx"
    metrics = ctx.family.export_onnx(ctx.parent_model, ctx.data, config, path)
    tolerance = config.atol + config.rtol * metrics.get("onnx_output_scale", 0.0)
    if metrics["onnx_max_abs_diff"] > tolerance:
        raise RuntimeError(
            f"ONNX Runtime output differs from PyTorch by {metrics['onnx_max_abs_diff']:.3g} "
            f"(> atol + rtol * output scale = {tolerance:.3g})"
        )
    return StageOutput(file=path, metrics={**metrics, **file_metrics(ctx, metrics, "onnx_")})


STAGES.register("export")(
    StageType(
        ExportConfig,
        run_export,
        gives="file",
        output_suffix=lambda config: ".onnx",
        description="export to ONNX and verify it",
    )
)
