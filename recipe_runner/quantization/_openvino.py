"""OpenVINO's NNCF post-training quantization, the CPU INT8 path Ultralytics itself uses: the FP32 ONNX
file is converted to OpenVINO's model, quantized with preset MIXED (symmetric weights, asymmetric
activations) and saved as an IR packed in one `.openvino` file (runtimes/openvino_runtime.py).

Why not a QDQ ONNX file: OpenVINO 2026.4's CPU plugin refused to compile quantized Conv layers read from
ONNX QDQ (NNCF's or ONNX Runtime's) on this machine ("No suitable implementations"); its own IR runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._request import QuantizeRequest


def quantize(request: QuantizeRequest) -> None:
    import logging

    import nncf
    import onnx
    import openvino as ov
    import yaml

    from ..runtimes import openvino_runtime

    if request.calibration is None or not len(request.calibration):
        raise ValueError("int8-static needs calibration images")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per node it leaves alone floods the console
    model = ov.convert_model(str(request.source))
    rows = [request.calibration[i : i + 1] for i in range(len(request.calibration))]
    ignored = nncf.IgnoredScope(names=list(request.keep_float), validate=False) if request.keep_float else None
    quantized = nncf.quantize(
        model,
        nncf.Dataset(rows),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(rows),
        **({"ignored_scope": ignored} if ignored else {}),
    )
    with tempfile.TemporaryDirectory(prefix="ov-quant-", dir=request.target.parent) as work:
        folder = Path(work)
        ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
        metadata = {p.key: p.value for p in onnx.load(str(request.source), load_external_data=False).metadata_props}
        if metadata:  # Ultralytics' validator reads names, stride and imgsz from here
            (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
        openvino_runtime.pack(folder, request.target)
