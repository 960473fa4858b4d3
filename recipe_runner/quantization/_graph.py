"""Read back what a quantized ONNX graph holds: which weighted layers run on INT8 weights."""

from __future__ import annotations

from pathlib import Path

WEIGHTED = ("Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
INT8 = (2, 3)  # onnx.TensorProto.UINT8, INT8


def layer_precision(path: Path) -> dict[str, int]:
    """Counts of weighted layers on INT8 weights and in float, for an ONNX or an OpenVINO (.openvino) file."""
    from ..runtimes import openvino_runtime

    return _openvino_precision(path) if openvino_runtime.is_openvino(path) else _onnx_precision(path)


def _openvino_precision(path: Path) -> dict[str, int]:
    """A Convolution/MatMul whose weight comes (through Convert/Subtract/Multiply) from an i8/u8 constant."""
    import tempfile

    import openvino as ov

    from ..runtimes import openvino_runtime

    with tempfile.TemporaryDirectory(prefix="ov-") as work:
        model = ov.Core().read_model(str(openvino_runtime.unpack(path, Path(work) / "m")))
    int8, floating = 0, 0
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "FakeConvert"):
            node = node.input_value(0).get_node()
        is_int8 = node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")
        int8, floating = int8 + is_int8, floating + (not is_int8)
    return {"int8_layers": int8, "float_layers": floating, "fp16_initializers": 0}


def _onnx_precision(path: Path) -> dict[str, int]:
    """Counts of weighted layers (Conv/MatMul/Gemm) whose weight is INT8 (a DequantizeLinear of an int8
    initializer, or an integer op) and of those that stay float, and the float16 initializers."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}
    int8, floating = 0, 0
    for node in graph.node:
        if node.op_type not in WEIGHTED:
            continue
        if node.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
            int8 += 1
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        source = produced_by.get(weight)
        if (
            source is not None
            and source.op_type == "DequantizeLinear"
            and source.input[0] in inits
            and inits[source.input[0]].data_type in INT8
        ):
            int8 += 1
        else:
            floating += 1
    fp16 = sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return {"int8_layers": int8, "float_layers": floating, "fp16_initializers": fp16}
