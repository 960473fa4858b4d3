"""The `torchvision` family: any torchvision classification architecture by name, or a built-in small CNN."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...config_base import ConfigProblem
from ...timing import timed
from .._shapes import apply_shapes, decomposed_layers, module_attributes, restore_decomposed
from ..base import EvalKnobs, Keep, ModelDescription, ModelFamily, TrainContext, TrainKnobs, TrainResult, torch_device
from ..hooks import training_hooks
from .small_cnn import SMALL_MODELS
from .weights import Preprocess, hub_weights, load_state_file, weights_preprocess

if TYPE_CHECKING:
    from ...data import DataSource
    from ..distill import Distillation
    from ..hooks import TrainHook


def _image_folder(base: type) -> type:
    """torchvision's ImageFolder, but hidden folders (.ipynb_checkpoints) are not classes and an unreadable image
    is named in the error."""

    class ImageFolder(base):
        def find_classes(self, directory: str):
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(f"{directory}: no class folders")
            return classes, {name: i for i, name in enumerate(classes)}

        def __getitem__(self, index: int):
            try:
                return super().__getitem__(index)
            except OSError as exc:
                raise OSError(f"cannot read image {self.samples[index][0]}: {exc}") from exc

    return ImageFolder


def _auxiliary(key: str) -> bool:
    """googlenet / inception_v3 weights hold auxiliary classifiers, which the runner builds without."""
    return key.startswith(("AuxLogits.", "aux1.", "aux2."))


def _known_architectures() -> list[str]:
    import torchvision

    return sorted(set(SMALL_MODELS) | set(torchvision.models.list_models(module=torchvision.models)))


class TorchvisionFamily(ModelFamily):
    name = "torchvision"
    primary_metric = "top1"
    accuracy_metrics = ("top1",)

    def check_source(self, source: str) -> None:
        if source not in _known_architectures():
            from ...registry import did_you_mean

            hint = did_you_mean(source, _known_architectures())
            if not hint and source.lower().startswith(("yolo", "rtdetr")):  # an Ultralytics name missing its suffix
                hint = f"; for an Ultralytics detector write '{source}.yaml'"
            raise ValueError(f"unknown torchvision classification model '{source}'{hint}")

    def __getstate__(self) -> dict[str, Any]:
        # loaded weights and imported code stay in their process (the family travels to Ray workers by pickle)
        return {k: v for k, v in vars(self).items() if k != "_loaded"}

    def _memo(self, key: str, make: Callable[[], Any]) -> Any:
        """Loaded once per process: the weights (and, for custom, the imported factory)."""
        loaded = self.__dict__.setdefault("_loaded", {})
        if key not in loaded:
            loaded[key] = make()
        return loaded[key]

    # -- trained weights --------------------------------------------------
    def _named_weights(self) -> str | None:
        """A torchvision weights name (IMAGENET1K_V1), or None for none or a file."""
        from ..base import WEIGHTS_NAME

        weights = self.model.weights if self.model is not None else None
        return weights if weights is not None and WEIGHTS_NAME.fullmatch(weights) else None

    def _weights_state(self) -> dict[str, torch.Tensor] | None:
        """The recipe's weights as a state dict (loaded with weights_only=True), or None for none."""
        if self.model is None or self.model.weights is None:
            return None
        name = self._named_weights()
        if name is None:
            return self._memo("weights", lambda: load_state_file(Path(self.model.weights)))
        return self._memo("weights", lambda: load_state_file(hub_weights(self.model.source, name)[0]))

    def preprocess(self) -> Preprocess:
        """The default square resize with ImageNet statistics, or a named weights' own `transforms()`."""
        name = self._named_weights()
        if name is None:
            return Preprocess()
        return self._memo("preprocess", lambda: weights_preprocess(hub_weights(self.model.source, name)[1]))

    def preprocessing(self) -> dict[str, Any]:
        return self.preprocess().record()

    def _head_name(self, model: nn.Module) -> str:
        head = self.output_layers(model)[0]
        return next(name for name, m in model.named_modules() if m is head)

    def _weights_classes(self, source: str, state: dict[str, torch.Tensor]) -> int:
        """How many classes the weights' head gives (the first dimension of its weight)."""
        head = self._head_name(self.skeleton(source))
        if f"{head}.weight" not in state:
            raise ConfigProblem(
                "weights", f"the weights have no '{head}.weight' (the head of {source}): are they weights of {source}?"
            )
        return int(state[f"{head}.weight"].shape[0])

    def _check_fit(self, source: str, state: dict[str, torch.Tensor], classes: int) -> None:
        """Every tensor of the architecture (built with the weights' class count) has its weight, of its shape."""
        expected = {k: tuple(v.shape) for k, v in self._shapes_of(source, classes).state_dict().items()}
        given = {k: tuple(v.shape) for k, v in state.items() if not _auxiliary(k)}
        problems = [f"missing {k}" for k in expected if k not in given][:3]
        problems += [f"unexpected {k}" for k in given if k not in expected][:3]
        problems += [
            f"{k}: {given[k]} in the file, {shape} in {source}"
            for k, shape in expected.items()
            if k in given and given[k] != shape
        ][:3]
        if problems:
            raise ConfigProblem("weights", f"the weights do not fit {source}: {'; '.join(problems)}")

    def model_notes(self, data) -> list[str]:
        state = self._weights_state()
        if state is None:
            return []
        source = self.model.source
        classes = self._weights_classes(source, state)
        self._check_fit(source, state, classes)
        if classes == data.num_classes:
            return []
        return [
            f"model: the weights' head gives {classes} classes and the data has {data.num_classes}: the head "
            f"({self._head_name(self.skeleton(source))}) is replaced and initialised afresh, seeded by the "
            "recipe's seed; every other layer keeps its weights"
        ]

    def _replace_head(self, model: nn.Module, num_classes: int) -> None:
        """A fresh output layer for `num_classes` (the caller seeds the RNG), of the old one's kind and inputs."""
        name = self._head_name(model)
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(
                old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
            )
        model.set_submodule(name, new)

    def _construct(self, source: str, num_classes: int) -> nn.Module:
        if source in SMALL_MODELS:
            model = SMALL_MODELS[source](num_classes=num_classes)
        else:
            import torchvision

            # googlenet / inception_v3 return auxiliary outputs while training; we train on the main head only
            extra = {"aux_logits": False} if source in ("googlenet", "inception_v3") else {}
            model = torchvision.models.get_model(source, weights=None, num_classes=num_classes, **extra)
        model._rr_source, model._rr_num_classes = source, num_classes
        return model

    def _shapes_of(self, source: str, num_classes: int) -> nn.Module:
        """The architecture with `num_classes` outputs, for its tensor shapes only (on the meta device: cheap)."""
        with torch.device("meta"):
            return self._construct(source, num_classes)

    def skeleton(self, source: str) -> nn.Module:
        # on the meta device: no memory, no initialisation, so even a large architecture costs milliseconds
        return self._shapes_of(source, num_classes=2)

    def build(self, source: str, data, seed: int) -> nn.Module:
        """From scratch, or with the recipe's weights; a head of another class count than the data's is replaced
        by a fresh one (seeded), a head that fits keeps its weights."""
        torch.manual_seed(seed)
        state = self._weights_state()
        if state is None:
            return self._construct(source, data.num_classes)
        classes = self._weights_classes(source, state)
        model = self._construct(source, classes)
        model.load_state_dict({k: v for k, v in state.items() if not _auxiliary(k)}, strict=True)
        if classes != data.num_classes:
            torch.manual_seed(seed)
            self._replace_head(model, data.num_classes)
            model._rr_num_classes = data.num_classes
        return model

    # -- data -------------------------------------------------------------
    def _loader(self, data, split: str, knobs, shuffle: bool, seed: int = 0):
        from torchvision import datasets

        transform = self.preprocess().transform(knobs.imgsz, train=shuffle)
        dataset = _image_folder(datasets.ImageFolder)(str(Path(data.path) / split), transform=transform)
        generator = torch.Generator().manual_seed(seed)
        # a last training batch of one image breaks BatchNorm ("expected more than 1 value per channel"): drop it
        lone_last = shuffle and len(dataset) > 1 and len(dataset) % knobs.batch == 1
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=knobs.batch,
            shuffle=shuffle,
            num_workers=knobs.workers,
            generator=generator,
            drop_last=lone_last,
        )

    # -- training ---------------------------------------------------------
    def _optimizer(self, model: nn.Module, knobs) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if knobs.optimizer in ("adam", "adamw"):
            cls = torch.optim.Adam if knobs.optimizer == "adam" else torch.optim.AdamW
            return cls(params, lr=knobs.lr, weight_decay=knobs.weight_decay)
        return torch.optim.SGD(
            params, lr=knobs.lr, momentum=knobs.momentum, weight_decay=knobs.weight_decay, nesterov=True
        )

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
        """Cosine-schedule training; it keeps no best epoch, so `keep` returns the last epoch's weights either way.
        With `distill`, the loss is Hinton KD on the logits mixed with cross-entropy by the distillation weight."""
        from ..distill import kd_loss, mixed_loss

        device = torch_device(knobs.device)
        teacher = distill.teacher.to(device).eval() if distill is not None else None
        state = ctx.resume_state
        if state is not None:
            model = self.rebuild(state["model"])
        model.to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer = self._optimizer(model, knobs)
        chain = training_hooks(hooks)
        start = 0
        best = -1.0
        since_best = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["epoch"])
            best = float(state["best"])
            since_best = int(state["since_best"])
            chain.load_state_dict(state.get("hooks", {}))
        chain.on_start(model, start, epochs)
        loss_fn = nn.CrossEntropyLoss()
        advance = ctx.progress("epochs", epochs)
        advance(start)
        metrics: dict[str, float] = {}
        evaluation: dict[str, float] | None = None
        trained = 0
        for epoch in range(start, epochs):
            for group in optimizer.param_groups:  # cosine schedule, computed so a resumed run matches
                group["lr"] = knobs.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
            model.train()
            chain.on_epoch_start(model, epoch)
            total = 0.0
            count = 0
            task_total = 0.0
            distill_total = 0.0
            # augmentation draws from the global RNG: seed per epoch so a resumed run is exact
            torch.manual_seed(ctx.seed * 1000 + epoch)
            for images, labels in self._loader(data, "train", knobs, shuffle=True, seed=ctx.seed * 1000 + epoch):
                images, labels = images.to(device), labels.to(device)
                optimizer.zero_grad()
                logits = model(images)
                loss = task = loss_fn(logits, labels)
                if teacher is not None and distill is not None:
                    with torch.no_grad():
                        taught = teacher(images)
                    soft = kd_loss(logits, taught, distill.temperature)
                    loss = mixed_loss(task, soft, distill.weight)
                    distill_total += soft.item() * len(labels)
                loss.backward()
                chain.on_gradients(model)
                optimizer.step()
                chain.after_step(model)
                total, count = total + loss.item() * len(labels), count + len(labels)
                task_total += task.item() * len(labels)
            evaluation = self.evaluate(model, data, knobs)
            metrics = {
                "train_loss": total / max(count, 1),
                "lr": optimizer.param_groups[0]["lr"],
                **chain.on_epoch_end(model, epoch),
                **evaluation,
            }
            if teacher is not None:  # the two parts of train_loss, each unweighted
                metrics.update(
                    {"train_task_loss": task_total / max(count, 1), "train_distill_loss": distill_total / max(count, 1)}
                )
            ctx.log_metrics(metrics, step=epoch + 1)
            trained += 1
            if metrics["top1"] > best:
                best, since_best = metrics["top1"], 0
            else:
                since_best += 1
            if ctx.epoch_state_due(epoch + 1):
                ctx.save_epoch_state(
                    {
                        "model": self.describe(model),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "best": best,
                        "since_best": since_best,
                        "hooks": chain.state_dict(),
                    },
                    epoch + 1,
                )
            advance(1)
            if knobs.patience and since_best >= knobs.patience:
                break
        model.cpu().eval()  # stages hand models around on the CPU; each trainer moves them where it needs
        if teacher is not None:
            teacher.cpu()
        return TrainResult(model, metrics, trained, start + trained, evaluation)

    @timed("evaluations")
    def evaluate(self, model: nn.Module, data: DataSource, knobs: EvalKnobs) -> dict[str, float]:
        model.eval()
        home = next(model.parameters()).device
        device = torch_device(knobs.device)
        model.to(device)
        correct = 0
        total = 0
        loss = 0.0
        with torch.no_grad():
            for images, labels in self._loader(data, "val", knobs, shuffle=False):
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(1) == labels).sum())
                total += len(labels)
        model.to(home)
        return {"top1": correct / max(total, 1), "val_loss": loss / max(total, 1)}

    def accumulate_gradients(
        self, model: nn.Module, data, knobs, batches: int, after_backward: Callable[[], None] | None = None
    ) -> None:
        device = torch_device(knobs.device)
        model.to(device).train()
        for i, (images, labels) in enumerate(self._loader(data, "train", knobs, shuffle=True)):
            if i >= batches:
                break
            nn.functional.cross_entropy(model(images.to(device)), labels.to(device)).backward()
            if after_backward is not None:
                after_backward()
        model.cpu().eval()

    # -- structure --------------------------------------------------------
    def example_inputs(self, model: nn.Module, imgsz: int) -> torch.Tensor:
        return torch.randn(1, 3, imgsz, imgsz)

    def output_layers(self, model: nn.Module) -> list[nn.Module]:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        return [linears[-1]] if linears else convs[-1:]

    def describe(self, model: nn.Module) -> dict[str, Any]:
        decomposed = decomposed_layers(model)
        return ModelDescription(
            family=self.name,
            fields={"source": model._rr_source, "num_classes": model._rr_num_classes},
            # only when decomposed: every other description stays as it was
            transforms={"decomposed": decomposed} if decomposed else {},
            state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            attributes=module_attributes(model),
        ).to_dict()

    def rebuild(self, description: dict[str, Any]) -> nn.Module:
        envelope = ModelDescription.from_dict(description, self.name)
        model = self._construct(envelope.fields["source"], int(envelope.fields["num_classes"]))
        return self._restore(model, envelope)

    def _restore(self, model: nn.Module, envelope: ModelDescription) -> nn.Module:
        """Replay the envelope's transforms and shapes onto a freshly built `model` and load its weights."""
        restore_decomposed(model, envelope.transforms.get("decomposed", []))
        apply_shapes(model, envelope.state_dict, envelope.attributes)
        return model.eval()

    # -- export -----------------------------------------------------------
    def write_onnx(self, model: nn.Module, path: Path, imgsz: int, opset: int = 17) -> Path:
        """TorchScript export, dynamic batch only: adaptive pooling exports with a kernel fixed by the traced size,
        so height and width stay fixed at imgsz."""
        _torchscript_export(model, self.example_inputs(model, imgsz), path, opset, dynamic=True)
        return path

    def calibration_batches(self, data, imgsz: int, count: int, seed: int = 0, split: str = "train") -> np.ndarray:
        """A seeded sample of a split's images (not the first ones: ImageFolder sorts by class), with the
        validation transform (no augmentation)."""
        from torchvision import datasets

        transform = self.preprocess().transform(imgsz, train=False)
        dataset = _image_folder(datasets.ImageFolder)(str(Path(data.path) / split), transform=transform)
        if len(dataset) == 0:
            raise ValueError(f"no {split} images found to calibrate INT8 quantization on")
        order = np.random.default_rng(seed).permutation(len(dataset))[:count]
        return np.stack([dataset[int(i)][0].numpy() for i in sorted(order)]).astype(np.float32)

    def evaluate_file(self, path: Path, data, knobs: EvalKnobs) -> dict[str, float]:
        """Top-1 and loss of the file (ONNX, or OpenVINO IR) on the validation split (batch 1 if its batch axis
        is fixed)."""
        from ...runtimes import dynamic_batch, runtime_for
        from ...runtimes.onnx_runtime import all_cores

        runtime = runtime_for(path)
        batch = knobs.batch if dynamic_batch(path) else 1
        sess = runtime.session(path, threads=all_cores())
        correct = 0
        total = 0
        loss = 0.0
        for images, labels in self._loader(data, "val", knobs.model_copy(update={"batch": batch}), shuffle=False):
            logits = torch.from_numpy(runtime.run(sess, images.numpy()).astype(np.float32))
            loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        return {"top1": correct / max(total, 1), "val_loss": loss / max(total, 1)}

    def export_onnx(self, model: nn.Module, data: DataSource, config, path: Path) -> dict[str, float]:
        from ...runtimes import onnx_runtime

        _torchscript_export(model, self.example_inputs(model, config.imgsz), path, config.opset, config.dynamic)
        if config.simplify:
            import onnxslim

            onnxslim.slim(str(path), str(path))
        sess = onnx_runtime.session(path, threads=1)
        batch = 1 if not config.dynamic else config.batch
        loader = self._loader(data, "val", config.model_copy(update={"batch": batch}), shuffle=False)
        batches = [(images.numpy(), labels.numpy()) for images, labels in loader]
        with torch.no_grad():
            agreement = onnx_runtime.compare(
                sess, lambda x: model(torch.from_numpy(x)).numpy(), (b for b, _ in batches)
            )
        correct = sum(int((onnx_runtime.run(sess, b).argmax(1) == y).sum()) for b, y in batches)
        single = np.random.default_rng(0).standard_normal((1, 3, config.imgsz, config.imgsz)).astype(np.float32)
        latency = onnx_runtime.latency(sess, single)
        return {
            "onnx_max_abs_diff": agreement.max_abs_diff,
            "onnx_output_scale": agreement.output_scale,
            "onnx_top1": correct / agreement.compared,
            "onnx_images": float(agreement.compared),
            "onnx_size_mb": path.stat().st_size / 1e6,
            "onnx_latency_ms": latency.median_ms,
            "onnx_latency_p90_ms": latency.p90_ms,
        }


def _torchscript_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """torch.onnx's TorchScript exporter, input `images` and output `logits`, the batch axis dynamic if asked."""
    model.eval()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
        )
