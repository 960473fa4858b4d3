"""Benchmark: the search's INT8 files under oneDNN instruction-set caps, to show where pruning stops paying.

OpenVINO's CPU plugin runs INT8 convolutions on AMX tiles where the CPU has them (this machine's Xeon does). A
tile multiplies 64 int8 input channels at once, so a layer pruned to 16 or 24 channels costs about what 64 do,
and YOLOv8n's early, high-resolution layers are that narrow to begin with. Capping oneDNN's instruction set with
ONEDNN_MAX_CPU_ISA (a oneDNN switch that OpenVINO's CPU plugin honours; a deployment can set it too) shows what
the same files cost on a CPU without AMX: AVX512_CORE_VNNI (a server without AMX), AVX2 (a laptop or edge box).

Each cap runs in its own process, because oneDNN reads the variable once, when it starts. There, each file is
timed against the FP32 model in ONNX Runtime in alternating pairs of bursts (runtimes/paired.py); ONNX
Runtime does not read the variable, so the baseline is the same program under every cap. Prints a table and
writes bench/results/isa_floor.json.

    python bench/isa_floor.py RETIME_FOLDER [--isa default AVX512_CORE_VNNI AVX2] [--bursts 10]

RETIME_FOLDER is the `retime` folder that bench/search_deploy.py leaves in its WORKDIR (fp32_640.onnx and one
folder per INT8 model); --search names the JSON that run wrote, for each trial's MACs and feasibility.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from recipe_runner.runtimes.paired import caller, paired_speedup  # noqa: E402

TRIAL = re.compile(r"^int8\[trial=(\d+)\]$")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--isa", nargs="+", default=["default", "AVX512_CORE_VNNI", "AVX2"])
    p.add_argument("--bursts", type=int, default=10, help="pairs of 5-call bursts per file and cap")
    p.add_argument("--search", type=Path, default=ROOT / "bench" / "results" / "search_deploy_paired.json")
    p.add_argument("--out", default="isa_floor.json", help="file name in bench/results")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def models(folder: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (file, runtime): the FP32 export in OpenVINO, then every INT8 model the search wrote."""
    found = {"fp32_openvino": (folder / "fp32_640.onnx", "openvino")}
    for sub in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
        files = [f for f in sub.glob("model.*") if f.suffix in (".onnx", ".openvino")] if sub.is_dir() else []
        if files:
            found[sub.name] = (files[0], "auto")
    return found


def child(args: argparse.Namespace) -> None:
    """Time every model against ONNX Runtime FP32 under this process's cap; the result as one JSON line."""
    baseline = caller(args.folder / "fp32_640.onnx", 640)
    result: dict = {}
    for name, (path, runtime) in models(args.folder).items():
        timed = paired_speedup(baseline, caller(path, 640, runtime), args.bursts)
        result[name] = {"ms": timed["model_ms"], **timed}
        # the baseline's latency as the first pairs of this process measured it
        result.setdefault("fp32_ms", timed["baseline_ms"])
        print(f"[bench] {os.environ.get('ONEDNN_MAX_CPU_ISA') or 'default'}: {name} done", file=sys.stderr, flush=True)
    print(json.dumps(result))


def trial_facts(search: Path) -> dict[str, dict]:
    """int8[trial=N] -> the search's record of that trial (MACs, mAP50-95, feasibility), where the JSON is there."""
    if not search.is_file():
        return {}
    data = json.loads(search.read_text())
    facts = {f"int8[trial={t['trial']}]": t for t in data["trials"] if t["state"] == "COMPLETE"}
    facts["hand_int8"] = data["hand_picked"]
    return facts


def main() -> None:
    args = options()
    if args.child:
        return child(args)
    by_isa = {}
    for isa in args.isa:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa != "default":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        command = [sys.executable, __file__, str(args.folder), "--bursts", str(args.bursts), "--child"]
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        by_isa[isa] = json.loads(done.stdout.strip().splitlines()[-1])
    facts = trial_facts(args.search)
    names = [n for n in by_isa[args.isa[0]] if n != "fp32_ms"]
    print(f"\n{'model':18} {'MACs@160':>9} {'mAP':>6} {'ok':>3} " + " ".join(f"{isa[:16]:>24}" for isa in args.isa))
    print(
        f"{'fp32 ONNX Runtime':18} {'':>9} {'':>6} {'':>3} "
        + " ".join(f"{by_isa[isa]['fp32_ms']:>14.1f} ms {'1.00x':>6}" for isa in args.isa)
    )
    for name in names:
        fact = facts.get(name, {})
        macs = f"{fact['macs'] / 1e6:8.1f}M" if fact.get("macs") else ""
        quality = f"{fact['mAP50-95']:.3f}" if fact.get("mAP50-95") is not None else ""
        feasible = {True: "yes", False: "no"}.get(fact.get("feasible"), "")
        cells = " ".join(
            f"{by_isa[isa][name]['ms']:>14.1f} ms {by_isa[isa][name]['speedup']:>5.2f}x" for isa in args.isa
        )
        print(f"{name:18} {macs:>9} {quality:>6} {feasible:>3} {cells}")
    for isa in args.isa:
        feasible = [n for n in names if facts.get(n, {}).get("feasible")]
        if feasible:
            best = max(feasible, key=lambda n: by_isa[isa][n]["speedup"])
            print(f"{isa}: best feasible {best}, {by_isa[isa][best]['speedup']:.2f}x over ONNX Runtime FP32 (paired)")
    result = {
        "folder": str(args.folder),
        "isa": args.isa,
        "method": f"each file against ONNX Runtime FP32 in {args.bursts} alternating pairs of 5-call bursts, batch 1, "
        "640 px, 1 thread; ms: the median of the model's bursts",
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs",
        "by_isa": by_isa,
        "trials": {
            n: {k: facts[n].get(k) for k in ("values", "macs", "mAP50-95", "feasible")} for n in names if n in facts
        },
    }
    out = ROOT / "bench" / "results" / args.out
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
