"""Benchmark: the runner's overhead against the same workflow written by hand (bench/overhead_reference.py).

YOLOv8n on builtin:shapes at 160 px: train, DepGraph group-l2 to ratio 0.5 in 2 steps with fine-tuning and
validation around each, fine-tune, ONNX export. Both sides start cold (a new process, a new MLflow store) and
run alternately, ROUNDS times each, so a slow spell of the machine hits both. The runner writes its own time
sections ($RECIPE_RUNNER_TIMINGS, recipe_runner/timing.py); then a fully cached re-run and `recipe plan` are
timed, and whether they imported Ultralytics. Each runner round gets an empty runner cache (data fingerprints,
the memo of passed model checks), so the first run of a recipe is what is measured. Prints a table and writes
bench/results/overhead.json.

    python bench/overhead.py [--rounds 2] [--epochs 20 --step-epochs 5 --final-epochs 10]   # ~8 min on 2 cores

`--kill` measures instead what a crash costs: a classifier recipe (train, prune, fine-tune; checkpoint_every:
auto) runs once whole, then, each time in a fresh store and cache, is killed with SIGKILL at 35%, 60% and 85%
of that time and run again on the same machine; the re-run's time against a whole run is what the epoch states
saved. Its epoch-checkpoint section (local writes and uploads) is the cost. Writes bench/results/overhead_kill.json.

    python bench/overhead.py --kill [--kill-model resnet18 --kill-images 512]   # ~2-4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = """\
version: 1
name: overhead
seed: 0
model: yolov8n.yaml
data: {data}
defaults: {{imgsz: 160, batch: 16, device: cpu, args: {{nbs: 16}}}}
stages:
  train: {{type: train, epochs: {epochs}}}
  prune: {{type: prune, method: depgraph, importance: group-l2, ratio: 0.5, steps: 2, finetune_epochs: {step_epochs},
          args: {{nbs: 16, warmup_epochs: 0}}}}
  finetune: {{type: finetune, epochs: {final_epochs}, args: {{nbs: 16, warmup_epochs: 0}}}}
  onnx: {{type: export, format: onnx}}
"""
# Is Ultralytics (or torch) imported by a command? Checked in the child process itself, at exit.
PROBE = """\
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["RR_PROBE"], "w").write(json.dumps(
    {m: m in sys.modules for m in ("ultralytics", "torch", "torch_pruning", "mlflow")})))
sys.argv = ["recipe", *sys.argv[1:]]
from recipe_runner.cli import main
main()
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--step-epochs", type=int, default=5)
    parser.add_argument("--final-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kill", action="store_true", help="measure what a SIGKILL mid-run costs a re-run instead")
    parser.add_argument("--kill-model", default="resnet18")
    parser.add_argument("--kill-images", type=int, default=512)
    args = parser.parse_args()
    if args.kill:
        kill_and_resume(args)
        return
    args.out = args.out or HERE / "results" / "overhead.json"

    from recipe_runner.data import cache_root, resolve_data
    from recipe_runner.offline import configure_offline

    # the same data.yaml for both sides (generated once, outside the timings); the reference gets the runner's
    # offline Ultralytics settings folder (fonts in place), nothing else of the runner
    data_yaml = str(resolve_data("builtin:shapes", "detect").path)
    configure_offline(cache_root())
    env = {**os.environ, "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"], "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="rr-overhead-"))
    recipe_text = RECIPE.format(
        data=data_yaml, epochs=args.epochs, step_epochs=args.step_epochs, final_epochs=args.final_epochs
    )
    reference_cmd = [
        sys.executable,
        str(HERE / "overhead_reference.py"),
        "--data",
        data_yaml,
        "--epochs",
        str(args.epochs),
        "--steps",
        "2",
        "--step-epochs",
        str(args.step_epochs),
        "--final-epochs",
        str(args.final_epochs),
    ]
    runs: list[dict] = []
    for round_ in range(args.rounds):
        ref_dir, run_dir = work / f"ref{round_}", work / f"run{round_}"
        ref_dir.mkdir()
        run_dir.mkdir()
        (run_dir / "recipe.yaml").write_text(recipe_text)
        reference = timed([*reference_cmd, "--out", str(ref_dir)], ref_dir, env)
        sections = run_dir / "timings.json"
        # a cache of its own per round: fingerprints and the memo of passed checks are computed anew (cold)
        cache = run_dir / "cache"
        runner = timed(
            [sys.executable, "-m", "recipe_runner.cli", "run", "recipe.yaml"],
            run_dir,
            {**env, "RECIPE_RUNNER_TIMINGS": str(sections), "RECIPE_RUNNER_CACHE": str(cache)},
        )
        runs.append(
            {
                "reference_s": reference,
                "runner_s": runner,
                "ratio": runner / reference,
                "sections": json.loads(sections.read_text()),
            }
        )
        print(
            f"round {round_ + 1}: reference {reference:.1f} s, runner {runner:.1f} s ({runner / reference:.3f}x)",
            flush=True,
        )

    # nothing left to do: a re-run and a plan of the last round's recipe, in its store
    last = work / f"run{args.rounds - 1}"
    probes = {}
    for verb in ("run", "plan"):
        probe = last / f"probe-{verb}.json"
        seconds = timed(
            [sys.executable, "-c", PROBE, verb, "recipe.yaml"],
            last,
            {**env, "RR_PROBE": str(probe), "RECIPE_RUNNER_CACHE": str(last / "cache")},
        )
        probes[verb] = {"seconds": seconds, "imported": json.loads(probe.read_text())}
    import_s = timed([sys.executable, "-c", "import torch, ultralytics, torch_pruning"], last, env)

    result = summarize(runs, probes, import_s, vars(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    shutil.rmtree(work, ignore_errors=True)


KILL_RECIPE = """\
version: 1
name: kill
seed: 0
model: {model}
data: builtin:shapes-cls?train={images}&val=64&imgsz=32
defaults: {{imgsz: 32, batch: 32, device: cpu}}
stages:
  train: {{type: train, epochs: 8}}
  prune: {{type: prune, method: depgraph, ratio: 0.5, steps: 1, finetune_epochs: 1}}
  finetune: {{type: finetune, epochs: 4}}
"""


def kill_and_resume(args: argparse.Namespace) -> None:
    """A whole run, then per kill point: a fresh store and cache, SIGKILL at that share of the whole run's time,
    and a timed re-run (which resumes from the epoch states this machine kept)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="rr-kill-"))
    recipe = KILL_RECIPE.format(model=args.kill_model, images=args.kill_images)
    cmd = [sys.executable, "-m", "recipe_runner.cli", "run", "recipe.yaml"]

    def fresh(name: str) -> tuple[Path, dict[str, str]]:
        folder = work / name
        folder.mkdir()
        (folder / "recipe.yaml").write_text(recipe)
        # a store of its own per run; one cache (the dataset, generated in the warm-up; a finished stage leaves no
        # epoch states in it, and every killed run is re-run to the end)
        return folder, {
            **env,
            "RECIPE_RUNNER_CACHE": str(work / "cache"),
            "RECIPE_RUNNER_TIMINGS": str(folder / "timings.json"),
        }

    def cpu() -> float:  # CPU seconds of finished children: on a busy machine wall time mostly measures the others
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    warm, warm_env = fresh("warm-up")  # imports and the dataset into the page cache: not measured
    timed(cmd, warm, warm_env)
    whole_dir, whole_env = fresh("whole")
    before = cpu()
    whole = timed(cmd, whole_dir, whole_env)
    whole_cpu = cpu() - before
    sections = json.loads((whole_dir / "timings.json").read_text())
    points = []
    for share in (0.35, 0.60, 0.85):
        folder, run_env = fresh(f"kill{int(share * 100)}")
        process = subprocess.Popen(
            cmd, cwd=folder, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(share * whole)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before = cpu()
        rerun = timed(cmd, folder, run_env)
        rerun_cpu = cpu() - before
        points.append(
            {
                "killed_at_share": share,
                "rerun_s": rerun,
                "rerun_cpu_s": rerun_cpu,
                "saved_share_wall": 1 - rerun / whole,
                "saved_share_cpu": 1 - rerun_cpu / whole_cpu,
            }
        )
        print(
            f"killed at {share:.0%}: re-run {rerun:.1f} s ({rerun_cpu:.1f} CPU s) of a whole {whole:.1f} s "
            f"({whole_cpu:.1f} CPU s)",
            flush=True,
        )
    result = {
        "settings": {"model": args.kill_model, "images": args.kill_images, "recipe": recipe},
        "cores": os.cpu_count(),
        "whole_run_s": whole,
        "whole_run_cpu_s": whole_cpu,
        "epoch_checkpoints_s": sections.get("epoch checkpoints", {}).get("seconds", 0.0),
        "sections_s": {k: v.get("seconds", 0.0) for k, v in sections.items()},
        "kills": points,
        "note": "measured on a shared 2-core machine under a load of 7-10 (other jobs): wall times mostly "
        "measure them; CPU seconds (user + system of the run's processes) are the comparable number",
    }
    out = args.out or HERE / "results" / "overhead_kill.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"epoch checkpoints (local every epoch, uploads on the cadence): {result['epoch_checkpoints_s']:.2f} s "
        f"of a {whole:.1f} s run, plus uploads {result['sections_s'].get('mlflow.log_artifact', 0.0):.2f} s "
        "(all artifacts)"
    )
    shutil.rmtree(work, ignore_errors=True)


def summarize(runs: list[dict], probes: dict, import_s: float, settings: dict) -> dict:
    names = sorted({name for r in runs for name in r["sections"]})
    sections = {name: statistics.mean(r["sections"].get(name, {}).get("seconds", 0.0) for r in runs) for name in names}
    reference = statistics.mean(r["reference_s"] for r in runs)
    runner = statistics.mean(r["runner_s"] for r in runs)
    return {
        "settings": {k: v for k, v in settings.items() if k != "out"},
        "cores": os.cpu_count(),
        "runs": runs,
        "reference_s": reference,
        "runner_s": runner,
        "ratio": runner / reference,
        "extra_s": runner - reference,
        "sections_s": sections,
        "cached_rerun": probes["run"],
        "plan": probes["plan"],
        "import_stack_s": import_s,
    }


def print_table(r: dict) -> None:
    print(f"\n{'':34}{'seconds':>9}")
    print(f"{'hand-written reference':34}{r['reference_s']:9.1f}")
    print(f"{'recipe run':34}{r['runner_s']:9.1f}   {r['ratio']:.3f}x, +{r['extra_s']:.1f} s")
    print("runner time sections (mean; the training itself is not a section):")
    for name, seconds in sorted(r["sections_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:32}{seconds:9.2f}")
    for verb in ("cached_rerun", "plan"):
        p = r[verb]
        print(f"{verb.replace('_', ' '):34}{p['seconds']:9.1f}   imports Ultralytics: {p['imported']['ultralytics']}")
    print(f"{'import torch+ultralytics+tp':34}{r['import_stack_s']:9.1f}")


if __name__ == "__main__":
    main()
