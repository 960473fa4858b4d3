"""The overhead benchmark's reference: the recipe's workflow written by hand against Ultralytics and torch-pruning.

It does what a user of torch-pruning's YOLOv8 example writes: train with `YOLO(...).train`, then per step prune
with a MetaPruner, validate, fine-tune the pruned module with a trainer that keeps it, validate; fine-tune; export
ONNX. No recipe-runner code. Ultralytics saves its own last.pt/best.pt every epoch, as it does for any user.

    python bench/overhead_reference.py --data DATA.yaml --out DIR [--epochs 8 --steps 2 --step-epochs 2 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

STARTED = time.time()
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.modules import C2f, Detect  # noqa: E402

# Ultralytics pickles the model into last.pt/best.pt: its classes must be importable from this module


class C2fTwoConvs(nn.Module):
    """C2f with its first 1x1 conv split in two (DepGraph cannot follow `chunk`); same outputs."""

    def __init__(self, block: nn.Module):
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.cv0, self.cv1 = copy.deepcopy(block.cv1), copy.deepcopy(block.cv1)
        for conv, part in ((self.cv0, slice(0, half)), (self.cv1, slice(half, 2 * half))):
            conv.conv.weight = nn.Parameter(block.cv1.conv.weight[part].clone())
            conv.conv.out_channels = half
            for name in ("weight", "bias"):
                setattr(conv.bn, name, nn.Parameter(getattr(block.cv1.bn, name)[part].clone()))
            conv.bn.running_mean = block.cv1.bn.running_mean[part].clone()
            conv.bn.running_var = block.cv1.bn.running_var[part].clone()
            conv.bn.num_features = half
        self.cv2, self.m = block.cv2, block.m
        for attr in ("f", "i", "type", "np"):
            setattr(self, attr, getattr(block, attr))

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class KeepModelTrainer(DetectionTrainer):
    """Fine-tunes the module it is given (Ultralytics would rebuild the unpruned one from its yaml)."""

    given: nn.Module

    def get_model(self, cfg=None, weights=None, verbose=True):
        return self.given


def main() -> None:
    args = parse_args()
    # Ultralytics sets OMP_NUM_THREADS=1 at import; train on every core, as the runner does
    torch.set_num_threads(os.cpu_count() or 1)
    common = dict(
        data=args.data,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        seed=0,
        deterministic=True,
        amp=False,
        plots=False,
        verbose=False,
        nbs=args.batch,
        exist_ok=True,
    )
    out = Path(args.out)

    def fine_tune(net: nn.Module, epochs: int, name: str) -> nn.Module:
        for p in net.parameters():
            p.requires_grad_(True)
        net.criterion = None
        trainer = KeepModelTrainer(
            overrides={
                **common,
                "model": "yolov8n.yaml",
                "epochs": epochs,
                "warmup_epochs": 0,
                "project": str(out),
                "name": name,
            }
        )
        trainer.given = net
        trainer.train()
        return trainer.ema.ema.float()

    def validate(net: nn.Module) -> float:
        return float(
            YOLO_wrap(net)
            .val(
                data=args.data,
                imgsz=args.imgsz,
                batch=args.batch,
                device="cpu",
                plots=False,
                verbose=False,
                project=str(out),
                name="val",
            )
            .box.map
        )

    def YOLO_wrap(net: nn.Module):
        wrapper = YOLO("yolov8n.yaml")
        wrapper.model = net
        return wrapper

    log: dict = {"steps": []}
    # 1. train
    yolo = YOLO("yolov8n.yaml")
    yolo.train(**common, epochs=args.epochs, project=str(out), name="train")
    model = copy.deepcopy(yolo.trainer.ema.ema).float()
    for child in list(model.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, C2f):
                setattr(child, attr, C2fTwoConvs(sub))
    example = torch.rand(1, 3, args.imgsz, args.imgsz)
    log["baseline_map"] = validate(model)

    # 2. prune in steps, validating and fine-tuning after each, as torch-pruning's YOLOv8 example does; each step
    # removes the same share of what is left, so `steps` steps land on `ratio`
    step_ratio = 1 - (1 - args.ratio) ** (1 / args.steps)
    for step in range(1, args.steps + 1):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=step_ratio,
            ignored_layers=[m for m in model.modules() if isinstance(m, Detect)],
        )
        pruner.step()
        macs, params = tp.utils.count_ops_and_params(model, example)
        before = validate(model)
        model = fine_tune(model, args.step_epochs, f"step{step}")
        log["steps"].append(
            {"step": step, "macs": macs, "params": params, "map_before_ft": before, "map_after_ft": validate(model)}
        )

    # 3. fine-tune, validate, export
    model = fine_tune(model, args.final_epochs, "finetune")
    log["final_map"] = validate(model)
    model.eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format = True, "onnx"
    torch.onnx.export(
        model,
        example,
        str(out / "model.onnx"),
        opset_version=17,
        input_names=["images"],
        output_names=["output0"],
        dynamo=False,
    )
    log["seconds_in_process"] = time.time() - STARTED
    (out / "reference.json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a YOLO data.yaml")
    parser.add_argument("--out", required=True, help="a folder for Ultralytics' runs and the ONNX file")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--step-epochs", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    return parser.parse_args()


if __name__ == "__main__":
    main()
