"""YOLO on GPUs, tested on the CPU: the device contract between stages, the offline AMP check, and the DDP path.

No GPU here (nor in CI), so:
- the device contract is checked where it is enforced: every stage boundary of a real YOLO recipe (all tensors on
  the CPU in fp32), and a stage that breaks it fails with the devices named;
- the AMP check is exercised with CPU autocast, and shown to replace Ultralytics' downloading check in a real
  training;
- multi-GPU training takes its real launch path: Ultralytics writes its DDP state file and worker script from the
  runner's trainer, and the script runs as one plain worker process on the CPU (Ultralytics trains on the CPU only
  without DDP, so torch.distributed.run and NCCL are the untested part). The worker trains the pruned model, rank 0
  spools each epoch, and the launching process relays them and rebuilds the result.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, RecordingContext, cli, write_recipe
from torch import nn


def _pruned(family, data) -> nn.Module:
    from recipe_runner.pruning import METHODS, plan_steps

    method = METHODS.get("depgraph")
    model = family.build("yolov8n.yaml", data, seed=0)
    return method.prune_step(
        model, family, data, method.config(method="depgraph", imgsz=64, ratio=0.5), plan_steps(0.5, 1)[0]
    )


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor in a nested checkpoint payload."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


# -- the device contract -------------------------------------------------------------------------------------------

BOUNDARIES = f"""\
version: 1
name: yolo-boundaries
model: yolov8n.yaml
data: {TINY_DATA}
defaults: {{imgsz: 64, batch: 8, checkpoint_every: 1}}
stages:
  train: {{type: train, epochs: 1}}
  sparse: {{type: sparse-train, epochs: 1, strength: 0.001}}
  prune: {{type: prune, method: slim, ratio: 0.3, steps: 1}}
  finetune: {{type: finetune, epochs: 1}}
  onnx: {{type: export, format: onnx}}
"""


def test_every_stage_boundary_hands_over_cpu_fp32_models_and_states(workspace: Path, monkeypatch):
    from recipe_runner import engine

    handed: dict[str, set] = {}
    real_check = engine.handoff_problems

    def recording_check(model):
        kinds = {(t.device.type, t.dtype) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
        handed[f"boundary {len(handed)}"] = kinds
        return real_check(model)

    saved: list[set] = []
    real_save = engine.RunningStage.save_epoch_state

    def recording_save(self, state, epoch):
        saved.append({(t.device.type, t.dtype) for t in _tensors(state) if t.is_floating_point()})
        real_save(self, state, epoch)

    monkeypatch.setattr(engine, "handoff_problems", recording_check)
    monkeypatch.setattr(engine.RunningStage, "save_epoch_state", recording_save)
    recipe = workspace / "recipe.yaml"
    recipe.write_text(BOUNDARIES)
    result = cli("run", recipe)
    assert result.exit_code == 0, result.output
    # train, sparse-train, prune and finetune give models; each was checked, and all were CPU fp32
    assert len(handed) == 4 and all(kinds == {("cpu", torch.float32)} for kinds in handed.values()), handed
    # epoch states of train, sparse-train and finetune, and prune's step state
    assert len(saved) == 4 and all(kinds == {("cpu", torch.float32)} for kinds in saved), saved


def test_handoff_problems_name_the_devices_and_dtypes_that_break_the_contract():
    from recipe_runner.models import handoff_problems

    assert handoff_problems(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))) == []
    on_meta = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to("meta")
    # conv weight and bias; BatchNorm weight, bias, running mean and var, and its batch counter
    assert handoff_problems(on_meta) == ["7 tensor(s) on meta (e.g. 0.weight)"]
    half = nn.Sequential(nn.Linear(2, 2)).half()
    assert handoff_problems(half) == ["2 tensor(s) in torch.float16 (e.g. 0.weight)"]
    channels_last = nn.Sequential(nn.Conv2d(3, 4, 3)).to(memory_format=torch.channels_last)
    assert handoff_problems(channels_last) == ["1 tensor(s) not contiguous (channels_last?) (e.g. 0.weight)"]


def test_a_stage_returning_a_model_off_contract_fails_and_says_why(workspace: Path, monkeypatch):
    from recipe_runner.models.torchvision import TorchvisionFamily

    real_train = TorchvisionFamily.train

    def train_then_half(self, *args, **kwargs):
        result = real_train(self, *args, **kwargs)
        result.model = result.model.half()
        return result

    monkeypatch.setattr(TorchvisionFamily, "train", train_then_half)
    recipe = write_recipe(workspace, "  train: {type: train, epochs: 1}\n")
    result = cli("run", recipe)
    assert result.exit_code == 1
    assert "not on the CPU in fp32" in result.output and "torch.float16" in result.output


# -- the offline AMP check -----------------------------------------------------------------------------------------


def test_offline_amp_check_compares_the_model_itself_under_autocast(family):
    from recipe_runner.models.yolo.amp import amp_is_safe, outputs_agree

    model = family.skeleton("yolov8n.yaml")
    example = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert outputs_agree(model, example, torch.float16)
    # fp16 overflows: 1e5 * x does not fit in float16 (max 65504)
    overflow = nn.Linear(4, 1)
    with torch.no_grad():
        overflow.weight.fill_(1e5)
    assert not outputs_agree(overflow, torch.ones(1, 4), torch.float16)
    assert not amp_is_safe(model)  # AMP is for CUDA only, as in Ultralytics


def test_training_asks_the_offline_amp_check_not_ultralytics_download(family, tiny_data, tmp_path: Path, monkeypatch):
    import ultralytics.engine.trainer as trainer_module

    from recipe_runner.models.yolo import amp as _yolo_amp
    from recipe_runner.models.yolo import training as _yolo_train

    original = trainer_module.check_amp
    asked: list[nn.Module] = []

    def recording_check(model):
        asked.append(model)
        return False

    real_args = _yolo_train.train_args
    # on the CPU the runner switches AMP off before any check; force it on so Ultralytics asks
    monkeypatch.setattr(_yolo_train, "train_args", lambda *a, **k: {**real_args(*a, **k), "amp": True})
    monkeypatch.setattr(_yolo_amp, "amp_is_safe", recording_check)
    model = _pruned(family, tiny_data)
    result = family.train(model, tiny_data, _knobs(), 1, RecordingContext(tmp_path))
    assert len(asked) == 1 and family.cost(asked[0], 64) == family.cost(model, 64)  # it judged the pruned model
    assert result.epochs_trained == 1
    assert trainer_module.check_amp is original  # put back after the trainer's setup


# -- multi-GPU (DDP) ----------------------------------------------------------------------------------------------


def _knobs(**overrides):
    from recipe_runner.stages.train import TrainConfig

    return TrainConfig(**{"epochs": 2, "imgsz": 64, "batch": 8, **overrides})


@pytest.fixture
def workers_on_cpu(monkeypatch):
    """Train through the DDP launch path, with Ultralytics' own state file and worker script, run as one plain
    process on the CPU; the launching process must not train itself."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    from recipe_runner.models.yolo import workers as _yolo_workers

    scripts: list[Path] = []

    def command(trainer):
        script = generate_ddp_file(trainer)
        scripts.append(Path(script))
        return [sys.executable, script], script

    def no_training_here(self):
        raise AssertionError("the launching process trained instead of its worker")

    monkeypatch.setattr(_yolo_workers, "launches_workers", lambda trainer: True)
    monkeypatch.setattr(_yolo_workers, "worker_command", command)
    monkeypatch.setattr(DetectionTrainer, "_do_train", no_training_here)
    return scripts


def test_ddp_state_file_holds_the_pruned_model_and_rebuilds_it_exactly(family, tiny_data, tmp_path: Path):
    """The file Ultralytics' launcher writes for its workers, loaded in a fresh interpreter as its worker script
    loads it: the runner's trainer class with its hooks, the pruned module with identical outputs, rank-0 spooling."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    from recipe_runner.models.hooks import training_hooks
    from recipe_runner.models.yolo.environment import resolved_data_yaml
    from recipe_runner.models.yolo.training import EpochCallbacks, make_trainer_class, train_args
    from recipe_runner.models.yolo.workers import SpoolSink
    from recipe_runner.pruning.regularizers import BatchNormL1

    model = _pruned(family, tiny_data).eval()
    example = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(example)[0]
    chain = training_hooks([BatchNormL1(family, 1e-3, "none", 64)])
    trainer = make_trainer_class(chain, None)(
        overrides=train_args(_knobs(), 2, resolved_data_yaml(tiny_data), tmp_path / "save", 0, "yolov8n.yaml")
    )
    trainer.model = model
    sink = SpoolSink(tmp_path / "spool", family.describe)
    trainer.add_callback("on_fit_epoch_end", EpochCallbacks(sink, family.describe, "best", None, 0).fit_epoch_end)
    script = generate_ddp_file(trainer)
    torch.save({"example": example, "expected": expected}, tmp_path / "io.pt")
    check = tmp_path / "check.py"
    check.write_text(
        textwrap.dedent(f"""
        import torch
        from ultralytics.utils import DEFAULT_CFG_DICT
        from ultralytics.utils.patches import torch_load

        state = torch_load({str(Path(script).with_suffix(".pt"))!r}, map_location="cpu")
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")
        trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
        trainer.model = state["model"]
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            out = trainer.model.eval()(io["example"])[0]
        assert torch.equal(out, io["expected"]), (out - io["expected"]).abs().max()
        assert [h.name for h in trainer.rr_hooks.hooks] == ["keep-zeros", "bn-l1"], trainer.rr_hooks.hooks
        spools = [cb.__self__.sink for cb in trainer.callbacks["on_fit_epoch_end"] if hasattr(cb, "__self__")]
        assert [type(s).__name__ for s in spools] == ["SpoolSink"], spools
        print("worker state ok", type(trainer).__name__, trainer.args.device)
    """)
    )
    try:
        done = subprocess.run([sys.executable, str(check)], capture_output=True, text=True, timeout=300)
    finally:
        ddp_cleanup(trainer, script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker state ok RunnerTrainer cpu" in done.stdout
    assert not Path(script).exists() and not Path(script).with_suffix(".pt").exists()


def test_training_in_a_worker_process_relays_epochs_and_resumes(family, tiny_data, tmp_path: Path, workers_on_cpu):
    from recipe_runner.pruning.regularizers import BatchNormL1

    model = _pruned(family, tiny_data)
    pruned = family.cost(model, 64)
    first = RecordingContext(tmp_path)
    result = family.train(model, tiny_data, _knobs(), 2, first, hooks=[BatchNormL1(family, 1e-3, "none", 64)])
    assert len(workers_on_cpu) == 1 and not workers_on_cpu[0].exists()  # launched once, cleaned up
    assert (result.epochs_trained, result.last_epoch) == (2, 2)
    assert family.cost(result.model, 64) == pruned  # the worker trained the pruned module, not the yaml
    assert {(t.device.type, t.dtype) for t in result.model.state_dict().values() if t.is_floating_point()} == {
        ("cpu", torch.float32)
    }
    # the worker's epochs reached the stage: metrics (the hook's too) at steps 1 and 2, and both epoch states
    assert [step for step, _ in first.logged] == [1, 2]
    assert "mAP50-95" in first.logged[0][1] and "penalty_strength" in first.logged[0][1]
    assert [s["epoch"] for s in first.states] == [1, 2] and "bn-l1" in first.states[0]["hooks"]
    # the weights really changed in the worker
    assert any(not torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), model.state_dict().values()))

    resumed_ctx = RecordingContext(tmp_path, resume_state=first.states[0])
    resumed = family.train(
        family.build("yolov8n.yaml", tiny_data, seed=0),
        tiny_data,
        _knobs(),
        2,
        resumed_ctx,
        hooks=[BatchNormL1(family, 1e-3, "none", 64)],
    )
    # the resume state travelled with the trainer class: the worker started at epoch 2
    assert (resumed.epochs_trained, resumed.last_epoch) == (1, 2)
    assert [step for step, _ in resumed_ctx.logged] == [2]
    assert family.cost(resumed.model, 64) == pruned


def test_only_rank_zero_spools_and_builds_states_only_when_asked(tmp_path: Path, monkeypatch, family):
    from recipe_runner.models.yolo.workers import WANT_STATE, SpoolSink

    sink = SpoolSink(tmp_path, family.describe)
    built = []

    def state():
        built.append(1)
        return {"x": torch.zeros(1)}

    (tmp_path / WANT_STATE).touch()
    monkeypatch.setenv("RANK", "1")
    sink.epoch_end(1, {"loss": 1.0}, state)
    sink.finish(nn.Linear(1, 1), {}, 1)
    assert [p.name for p in tmp_path.iterdir()] == [WANT_STATE] and built == []  # other ranks write and build nothing
    monkeypatch.setenv("RANK", "0")
    sink.epoch_end(1, {"loss": 1.0}, state)
    (tmp_path / WANT_STATE).unlink()
    sink.epoch_end(2, {"loss": 0.5}, state)  # the launching process's cadence did not ask for epoch 2's state
    assert built == [1]
    first, second = (torch.load(tmp_path / f"epoch-00000{e}.pt", weights_only=True) for e in (1, 2))
    assert first["state"] is not None and second["state"] is None and second["metrics"] == {"loss": 0.5}


def test_the_relay_asks_for_states_on_the_stage_cadence(tmp_path: Path, family):
    """checkpoint_every: 2 (the first epoch is always written, then every second): the want-state flag is up for
    epochs 1 and 3 only, and a state that arrives for an epoch the cadence does not want is not saved."""
    from recipe_runner.models.yolo.training import ContextSink
    from recipe_runner.models.yolo.workers import WANT_STATE, SpoolRelay
    from recipe_runner.persistence import EpochCadence, save_checkpoint

    class EverySecond(RecordingContext):
        cadence = EpochCadence(2)

        def epoch_state_due(self, epoch):
            return self.cadence.due(epoch)

        def save_epoch_state(self, state, epoch):
            self.cadence.written(epoch, 0.0)
            self.states.append({"epoch": epoch, **state})

    ctx = EverySecond(tmp_path)
    spool = tmp_path / "spool"
    relay = SpoolRelay(spool, ContextSink(ctx, lambda n: None), family.rebuild, start_epoch=0)
    flags = []
    for epoch in (1, 2, 3):
        flags.append((spool / WANT_STATE).exists())
        save_checkpoint(
            {"epoch": epoch, "metrics": {"loss": 1.0 / epoch}, "state": {"w": torch.ones(1)}},
            spool / f"epoch-{epoch:06d}.pt",
        )
        assert relay.pump() == 1
    assert flags == [True, False, True] and not (spool / WANT_STATE).exists()  # not for epoch 4 either
    assert [s["epoch"] for s in ctx.states] == [1, 3] and [step for step, _ in ctx.logged] == [1, 2, 3]


def test_a_failing_worker_fails_the_stage_and_keeps_its_finished_epochs(
    family, tiny_data, tmp_path: Path, workers_on_cpu, monkeypatch
):
    from recipe_runner.models.yolo import workers as _yolo_workers

    real_command = _yolo_workers.worker_command

    def crash_after_first_epoch(trainer):
        command, script = real_command(trainer)
        # the worker runs Ultralytics' script with the runner's spool hook: exit hard once epoch 1 is spooled
        wrapper = Path(script).with_name(Path(script).stem + "_crash.py")
        wrapper.write_text(
            textwrap.dedent(f"""
            import os, runpy
            from recipe_runner.models.yolo import workers as w
            real = w.SpoolSink.epoch_end
            def epoch_end(self, epoch, metrics, state):
                real(self, epoch, metrics, state)
                os._exit(3)
            w.SpoolSink.epoch_end = epoch_end
            runpy.run_path({script!r}, run_name="__main__")
        """)
        )
        return [sys.executable, str(wrapper)], script

    monkeypatch.setattr(_yolo_workers, "worker_command", crash_after_first_epoch)
    ctx = RecordingContext(tmp_path)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        family.train(_pruned(family, tiny_data), tiny_data, _knobs(), 2, ctx)
    assert [step for step, _ in ctx.logged] == [1] and [s["epoch"] for s in ctx.states] == [1]


def test_device_lists_are_checked_where_they_are_written(workspace: Path):
    recipe = workspace / "recipe.yaml"
    recipe.write_text(BOUNDARIES)
    twice = cli("validate", recipe, "--set", "stages.train.device=[0, 0]")
    assert twice.exit_code == 2 and "stages.train" in twice.output and "names a GPU twice" in twice.output
    small = cli("validate", recipe, "--set", "stages.finetune.device=[0, 1, 2]", "--set", "stages.finetune.batch=2")
    assert small.exit_code == 2 and "stages.finetune" in small.output and "batch >= 3" in small.output
    ray = cli("validate", recipe, "--set", "stages.train.device=[0, 1]", "--set", "stages.train.resources={gpus: 1}")
    assert ray.exit_code == 2 and "resources.gpus 1 is fewer than the 2 GPUs" in ray.output
    if torch.cuda.device_count() < 2:
        # a list of GPUs is a yolo training device, but this machine lacks them: refused at plan time, located
        planned = cli("plan", recipe, "--set", "stages.train.device=[0, 1]")
        assert planned.exit_code == 2 and "stages.train.device" in planned.output
        assert "needs a CUDA GPU" in planned.output or "this machine has" in planned.output
    classifier = write_recipe(workspace, "  train: {type: train, epochs: 1, device: [0, 1]}\n", filename="cls.yaml")
    refused = cli("plan", classifier)
    assert refused.exit_code == 2 and "trains on one device; got a list of 2" in refused.output


def test_ray_reserves_one_gpu_per_listed_device(workspace: Path):
    from recipe_runner.executors.ray_executor import resources
    from recipe_runner.stages.train import TrainConfig

    assert resources(TrainConfig(device=[0, 1, 2], batch=16))["num_gpus"] == 3.0
    assert resources(TrainConfig(device=0))["num_gpus"] == 1.0
    assert resources(TrainConfig())["num_gpus"] == 0.0


def test_a_ray_task_trains_on_the_gpus_ray_assigned_it(monkeypatch):
    """Ray shows a task only its GPUs, renumbered from 0: a device list becomes [0, 1, ...], one GPU becomes 0."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from recipe_runner.executors.ray_executor import _on_assigned_gpu
    from recipe_runner.graph import StageNode
    from recipe_runner.planner import PlannedStage
    from recipe_runner.stages.train import TrainConfig

    def planned(device):
        return PlannedStage(StageNode("train", "train", "train", TrainConfig(device=device, batch=16), None, {}), "run")

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["3", "5"])
    assert _on_assigned_gpu(planned([3, 5])).node.config.device == [0, 1]
    assert _on_assigned_gpu(planned(3)).node.config.device == 0
    assert _on_assigned_gpu(planned("cpu")).node.config.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_on_a_gpu_training_hands_back_cpu_fp32_contiguous_tensors(family, tiny_data, tmp_path: Path):
    """The real GPU path (device: 0, AMP on, channels_last): run where a GPU is; skipped on the CPU-only CI."""
    from recipe_runner.models import handoff_problems

    ctx = RecordingContext(tmp_path)
    model = _pruned(family, tiny_data)
    result = family.train(model, tiny_data, _knobs(device=0), 2, ctx)
    assert handoff_problems(result.model) == []
    assert all(t.device.type == "cpu" for state in ctx.states for t in _tensors(state))
    assert family.cost(result.model, 64) == family.cost(model, 64)
    assert family.evaluate(result.model, tiny_data, _knobs(device=0))["mAP50-95"] >= 0.0
