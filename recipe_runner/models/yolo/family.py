"""The `yolo` family: Ultralytics detection models (any detection yaml, or a local .pt), trained by Ultralytics."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...timing import timed
from .._shapes import apply_shapes, decomposed_layers, module_attributes, restore_decomposed
from ..base import EvalKnobs, Keep, ModelDescription, ModelFamily, TrainContext, TrainKnobs, TrainResult
from .architecture import check_architecture, check_description
from .environment import first_device_string, resolved_data_yaml, strip_integration_callbacks, ultralytics_ready
from .stride import round_to_stride

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ...data import DataSource
    from ..distill import Distillation
    from ..hooks import TrainHook

_NOT_DETECTION = ("Segment", "Pose", "OBB", "Classify", "WorldDetect", "YOLOEDetect", "RTDETRDecoder", "Semantic")


def _head_prefix(model: Any) -> str:
    """'/model.22/': the node-name prefix of the last layer (the Detect head) in Ultralytics' ONNX export."""
    import re

    indices = [int(m.group(1)) for n in model.graph.node if (m := re.match(r"/model\.(\d+)/", n.name))]
    if not indices:
        raise ValueError("cannot find the Detect head's nodes in the ONNX graph (not an Ultralytics export?)")
    return f"/model.{max(indices)}/"


class YoloFamily(ModelFamily):
    name = "yolo"
    primary_metric = "mAP50-95"
    accuracy_metrics = ("mAP50", "mAP50-95", "precision", "recall")
    # a list of GPUs trains with Ultralytics' DDP (models/yolo/workers.py); check_device checks each exists
    max_devices = 1024

    # -- building ---------------------------------------------------------
    def check_source(self, source: str) -> None:
        if source.lower().endswith(".pt"):
            # never hand Ultralytics a missing *.pt: it would try to download it from GitHub
            if not Path(source).expanduser().is_file():
                raise ValueError(
                    f"model checkpoint '{source}' does not exist (the yolo family loads local .pt files only; "
                    "use an Ultralytics yaml such as yolov8n.yaml to train from scratch)"
                )
            return
        if not source.lower().endswith((".yaml", ".yml")):
            raise ValueError(
                f"'{source}' is neither an Ultralytics model yaml nor a .pt checkpoint "
                "(the yolo family takes names like yolov8n.yaml or yolo11n.yaml, or a path to a .yaml/.pt)"
            )
        self._yaml_dict(source)

    def check_args(self, args: dict[str, Any]) -> None:
        from .training import check_args

        check_args(args)

    def _yaml_dict(self, source: str) -> dict[str, Any]:
        """The architecture dict of an Ultralytics model yaml (a name Ultralytics ships, or a local file)."""
        ultralytics_ready()
        from ultralytics.nn.tasks import yaml_model_load

        path = Path(source).expanduser()
        try:
            cfg = yaml_model_load(str(path) if path.is_file() else source)
        except (FileNotFoundError, OSError) as exc:
            raise ValueError(
                f"unknown Ultralytics model yaml '{source}' ({exc}); use a shipped name like yolov8n.yaml "
                "or yolo11n.yaml, or a path to a yaml file"
            ) from None
        head = cfg.get("head") or []
        last = head[-1][2] if head and len(head[-1]) > 2 else ""
        if "Detect" not in str(last) or any(word in str(last) for word in _NOT_DETECTION):
            raise ValueError(
                f"'{source}' is not a detection model (its head is '{last}'); the yolo family trains detectors"
            )
        # refused here, not at the first reuse: its stage checkpoints must pass the same check to be rebuilt
        check_architecture(cfg, f"model '{source}'")
        return cfg

    def source_identity(self, source: str) -> str | None:
        """A local yaml by what Ultralytics resolves from it: the file it really reads and the scale it takes from
        the name (byte-identical yolov8n-custom.yaml and yolov8s-custom.yaml build different models)."""
        if source.lower().endswith(".pt"):
            return None
        try:
            cfg = {k: v for k, v in self._yaml_dict(source).items() if k != "yaml_file"}  # yaml_file: the path
        except ValueError:
            return None  # not buildable: the planner's checks say why, at the model's line
        text = json.dumps(cfg, sort_keys=True, default=str)
        return f"yolo-yaml-sha256:{hashlib.sha256(text.encode()).hexdigest()}"

    def build(self, source: str, data, seed: int) -> nn.Module:
        ultralytics_ready()
        import torch
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(seed)
        nc = data.num_classes
        if source.lower().endswith(".pt"):
            from ultralytics.nn.tasks import load_checkpoint

            weights, _ = load_checkpoint(str(Path(source).expanduser()))  # the user's own local file
            if any(type(m).__name__ == "SplitC2f" for m in weights.modules()):
                raise ValueError(
                    f"'{source}' holds a pruned runner model; start from the recipe stage that made it instead"
                )
            check_architecture(weights.yaml, f"model '{source}'")
            model = DetectionModel(copy.deepcopy(weights.yaml), nc=nc, verbose=False)
            model.load(weights, verbose=False)
        else:
            model = DetectionModel(self._yaml_dict(source), nc=nc, verbose=False)
        model.nc, model.names = nc, dict(enumerate(data.names))
        return model

    def model_notes(self, data) -> list[str]:
        """A trained .pt whose class count differs from the data's: its class head starts fresh (Ultralytics
        transfers every layer whose shape fits)."""
        source = self.model.source if self.model is not None else ""
        if not source.lower().endswith(".pt"):
            return []
        nc = int(self.skeleton(source).yaml.get("nc", 0))
        if nc == data.num_classes:
            return []
        return [
            f"model: {Path(source).name} detects {nc} classes and the data has {data.num_classes}: the Detect "
            "head's class branches are initialised afresh (seeded by the recipe's seed); the rest keeps its weights"
        ]

    def skeleton(self, source: str) -> nn.Module:
        # built on the CPU (Ultralytics runs a forward pass to find the strides): a fraction of a second for yolov8n
        ultralytics_ready()
        from ultralytics.nn.tasks import DetectionModel

        if source.lower().endswith(".pt"):
            from ultralytics.nn.tasks import load_checkpoint

            return load_checkpoint(str(Path(source).expanduser()))[0]
        return DetectionModel(self._yaml_dict(source), nc=1, verbose=False)

    # -- training ---------------------------------------------------------
    def train(
        self,
        model: nn.Module,
        data: DataSource,
        knobs: TrainKnobs,
        epochs: int,
        ctx: TrainContext,
        hooks: Sequence[TrainHook] = (),
        keep: Keep = "best",
        distill: Distillation | None = None,
    ) -> TrainResult:
        """Ultralytics' trainer; `distill` wraps the student in Ultralytics' DistillationModel (yolo/training.py)."""
        from .training import release_gpu_memory, run_training

        source = str(getattr(model, "yaml", {}).get("yaml_file", "yolov8n.yaml"))
        model, metrics, trained, reached = run_training(
            model,
            self.rebuild,
            self.describe,
            resolved_data_yaml(data),
            knobs,
            epochs,
            ctx,
            source,
            hooks,
            keep,
            distill,
        )
        release_gpu_memory()
        return TrainResult(model, metrics, trained, reached)

    def evaluate(self, model: nn.Module, data: DataSource, knobs: EvalKnobs) -> dict[str, float]:
        return self._validate(copy.deepcopy(model).float().eval(), data, knobs)

    @timed("evaluations")
    def _validate(self, model: Any, data, knobs, batch: int | None = None) -> dict[str, float]:
        """Ultralytics' validator on the val split; `model` is a module or an exported file's path."""
        ultralytics_ready()
        from ultralytics.models.yolo.detect import DetectionValidator

        save_dir = Path(tempfile.mkdtemp(prefix="yolo-val-"))
        try:
            args = {
                "data": resolved_data_yaml(data),
                "imgsz": knobs.imgsz,
                "batch": batch or knobs.batch,
                "plots": False,
                "save_json": False,
                "verbose": False,
                "device": first_device_string(knobs.device),
                "workers": knobs.workers,
                "half": False,
                "save_dir": str(save_dir),
                "task": "detect",
                "mode": "val",
                "split": "val",
            }
            validator = DetectionValidator(args=args, save_dir=save_dir)
            strip_integration_callbacks(validator)
            results = validator(model=model)
        finally:
            shutil.rmtree(save_dir, ignore_errors=True)
        return {
            "mAP50": float(results.get("metrics/mAP50(B)", 0.0)),
            "mAP50-95": float(results.get("metrics/mAP50-95(B)", 0.0)),
            "precision": float(results.get("metrics/precision(B)", 0.0)),
            "recall": float(results.get("metrics/recall(B)", 0.0)),
        }

    def accumulate_gradients(
        self, model: nn.Module, data, knobs, batches: int, after_backward: Callable[[], None] | None = None
    ) -> None:
        """Gradients of the detection loss over a few training batches (for Taylor and Hessian importance)."""
        ultralytics_ready()
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_dataloader, build_yolo_dataset
        from ultralytics.data.utils import check_det_dataset

        cfg = get_cfg(overrides={"imgsz": knobs.imgsz, "batch": knobs.batch, "task": "detect", "mode": "train"})
        info = check_det_dataset(resolved_data_yaml(data))
        dataset = build_yolo_dataset(cfg, info["train"], knobs.batch, info, mode="train", stride=32)
        loader = build_dataloader(dataset, knobs.batch, workers=0, shuffle=True, rank=-1)
        model.args, model.criterion = cfg, None
        model.train()
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            batch["img"] = batch["img"].float() / 255
            loss, _ = model.loss(batch)
            loss.sum().backward()
            if after_backward is not None:
                after_backward()
        model.criterion = None
        model.eval()

    # -- structure --------------------------------------------------------
    def example_inputs(self, model: nn.Module, imgsz: int) -> torch.Tensor:
        import torch

        stride = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
        size = round_to_stride(imgsz, stride)
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def output_layers(self, model: nn.Module) -> list[nn.Module]:
        """The Detect head, plus YOLO11's attention blocks (C2PSA, PSABlock, Attention).

        Attention splits channels by heads, which DepGraph cannot follow: with them prunable
        torch-pruning did not finish on yolo11n in minutes. Kept whole, the rest of YOLO11 prunes.
        """
        from ultralytics.nn.modules.block import C2PSA, Attention, PSABlock
        from ultralytics.nn.modules.head import Detect

        return [m for m in model.modules() if isinstance(m, (Detect, C2PSA, PSABlock, Attention))]

    def head_outputs(self, model: nn.Module) -> list[nn.Module]:
        """The last layer of each Detect branch (box, class; one-to-one copies in YOLOv10) and the DFL, which give
        the outputs' widths, plus the attention blocks: the branches' inner convolutions become prunable."""
        from torch import nn
        from ultralytics.nn.modules.head import Detect

        kept = [m for m in self.output_layers(model) if not isinstance(m, Detect)]
        for head in (m for m in model.modules() if isinstance(m, Detect)):
            branches = [child for child in head.children() if isinstance(child, nn.ModuleList)]
            kept += [branch[-1] for modules in branches for branch in modules if isinstance(branch, nn.Sequential)]
            kept += [child for child in head.children() if not isinstance(child, nn.ModuleList)]
        return kept

    def prepare_for_pruning(self, model: nn.Module) -> nn.Module:
        from .blocks import replace_c2f

        if replace_c2f(model):
            model._rr_split_c2f = True
        return model

    def describe(self, model: nn.Module) -> dict[str, Any]:
        transforms: dict[str, Any] = {"split_c2f": bool(getattr(model, "_rr_split_c2f", False))}
        decomposed = decomposed_layers(model)
        if decomposed:  # only then: every other description stays as it was
            transforms["decomposed"] = decomposed
        nc = int(model.nc if hasattr(model, "nc") else model.yaml["nc"])
        names = [str(v) for _, v in sorted(dict(getattr(model, "names", {}) or {}).items())]
        return ModelDescription(
            family=self.name,
            fields={"yaml": copy.deepcopy(model.yaml), "nc": nc, "names": names},
            transforms=transforms,
            state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            attributes=module_attributes(model),
        ).to_dict()

    def rebuild(self, description: dict[str, Any]) -> nn.Module:
        """Only from an allow-listed architecture: the description may come from someone else's checkpoint."""
        envelope = ModelDescription.from_dict(description, self.name)
        ultralytics_ready()
        from ultralytics.nn.tasks import DetectionModel

        check_description(description)
        fields = envelope.fields
        model = DetectionModel(copy.deepcopy(fields["yaml"]), nc=int(fields["nc"]), verbose=False)
        if envelope.transforms.get("split_c2f"):
            self.prepare_for_pruning(model)
        restore_decomposed(model, envelope.transforms.get("decomposed", []))
        apply_shapes(model, envelope.state_dict, envelope.attributes)
        model.nc = int(fields["nc"])
        if fields.get("names"):
            model.names = dict(enumerate(fields["names"]))
        return model.eval()

    # -- export -----------------------------------------------------------
    def export_onnx(self, model: nn.Module, data, config, path: Path) -> dict[str, float]:
        from .export import export_and_check

        return export_and_check(self, model, data, config, path)

    def write_onnx(self, model: nn.Module, path: Path, imgsz: int, opset: int = 17) -> Path:
        """Ultralytics' exporter with dynamic batch, height and width (its metadata lets the validator run the file,
        and a model quantized at the recipe's imgsz can be timed at 640)."""
        from .export import export_onnx_file

        return export_onnx_file(model, path, round_to_stride(imgsz), opset, True, False, 1)

    def calibration_batches(self, data, imgsz: int, count: int, seed: int = 0, split: str = "train"):
        from .export import sample_images

        return sample_images(data, round_to_stride(imgsz), count, seed, split)

    def file_imgsz(self, imgsz: int) -> int:
        return round_to_stride(imgsz)

    def evaluate_file(self, path: Path, data, knobs: EvalKnobs) -> dict[str, float]:
        """Ultralytics' validator runs the file: an .onnx directly, an OpenVINO IR unpacked into the
        `*_openvino_model` folder it recognises.

        Ultralytics' AutoBackend picks its loader from the file name (a *.pt is unpickled, code and all), so it is
        handed only a copy named here, model.onnx or model_openvino_model/, whatever the file was called."""
        from ...runtimes.openvino_runtime import is_openvino, unpack

        path = Path(path)
        if path.suffix not in (".onnx", ".openvino"):
            raise ValueError(
                f"{path.name}: only .onnx and .openvino model files are evaluated (a file named otherwise "
                "could make Ultralytics unpickle it)"
            )
        knobs = knobs.model_copy(update={"imgsz": round_to_stride(knobs.imgsz)})
        with tempfile.TemporaryDirectory(prefix="yolo-file-") as work:
            if not is_openvino(path):
                named = Path(work) / "model.onnx"
                shutil.copyfile(path, named)
                return self._validate(str(named), data, knobs)
            folder = unpack(path, Path(work) / "model_openvino_model")
            return self._validate(str(folder.parent), data, knobs)

    def float_nodes(self, model: Any) -> list[str]:
        """The Detect head's decode: every node of the head module except its box/class convolution branches
        (cv2, cv3; cv4 in variants), i.e. the DFL convolution, softmax, anchors, sigmoid and the final Concat of
        pixel boxes with 0-1 scores, where one INT8 scale rounds every score to zero."""
        head = _head_prefix(model)
        branches = tuple(f"{head}cv{i}." for i in (2, 3, 4))
        return [n.name for n in model.graph.node if n.name.startswith(head) and not n.name.startswith(branches)]

    bench_imgsz = 640
    qat_float_layers = ("dfl",)  # the head's DFL convolution: part of the decode that stays float
