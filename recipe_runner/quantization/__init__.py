"""Post-training quantization of an FP32 ONNX file, by backend: ONNX Runtime (default) or OpenVINO's NNCF.

Both write an ONNX file (QDQ for INT8) so one evaluation path (the family's evaluate_file) measures
every result; the stage (stages/quantize.py) owns evaluation, the accuracy guard and logging.
"""

from ._graph import layer_precision
from ._request import QuantizeRequest
from .backends import BACKENDS, missing_backend

__all__ = ["BACKENDS", "QuantizeRequest", "layer_precision", "missing_backend"]
