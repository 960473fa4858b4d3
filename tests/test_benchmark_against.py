"""benchmark `against: <stage>`: a speedup over a baseline stage's model or file, timed in alternating pairs of
bursts (runtimes/paired.py), with the baseline a graph input: ordered before, in the cache key, located errors;
and `cpu_isa`: the timings in a child process under a oneDNN instruction-set cap (runtimes/timing.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TINY_CLS, cli, count_runs, local_uri, stage_runs, write_recipe

from recipe_runner import persistence as T
from recipe_runner.graph import compile_graph
from recipe_runner.recipe import parse_recipe
from recipe_runner.runtimes.paired import paired_speedup
from recipe_runner.runtimes.timing import TimingSpec, time_files_capped

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None

STAGES = """\
  train: {type: train, epochs: 1}
  prune: {type: prune, method: depgraph, ratio: 0.5}
  int8: {type: quantize, from: prune, calibration_images: 16}
  onnx: {type: export, from: train}
  bench: {type: benchmark, from: int8, against: train, bench_imgsz: 32, pairs: 4}
  bench_file: {type: benchmark, from: int8, against: onnx, bench_imgsz: 32, pairs: 4}
"""


def _graph(stages: str):
    return compile_graph(parse_recipe(TINY_CLS.format(name="against", stages=stages), "recipe.yaml"))


def test_paired_speedup_orders_its_quartiles_and_measures_both_sides():
    slow = lambda: sum(range(20_000))  # noqa: E731
    fast = lambda: sum(range(2_000))  # noqa: E731
    timed = paired_speedup(slow, fast, pairs=6)
    assert timed["q1"] <= timed["speedup"] <= timed["q3"]
    assert timed["baseline_ms"] > 0 and timed["model_ms"] > 0
    # ten times the work: faster by far more than any noise (the direction, not a timing bound)
    assert timed["speedup"] > 1.0


def test_a_benchmark_times_its_file_against_a_baseline_model_and_a_baseline_file(workspace: Path):
    result = cli("run", write_recipe(workspace, STAGES))
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    for node, baseline in (("bench", "train"), ("bench_file", "onnx")):
        metrics, tags = runs[node].data.metrics, runs[node].data.tags
        assert metrics["speedup_q1_t1_32px"] <= metrics["speedup_t1_32px"] <= metrics["speedup_q3_t1_32px"], node
        assert metrics["baseline_latency_ms_t1_32px"] > 0 and metrics["latency_ms_t1_32px"] > 0, node
        # which stage, and which run, the baseline came from
        assert tags[T.input_stage("baseline")] == baseline, node
        assert tags[T.input_run("baseline")] == runs[baseline].info.run_id, node
    # the plain latency keys are still there, as without a baseline
    assert "speedup_t1_32px" not in runs["int8"].data.metrics
    rerun = cli("run", write_recipe(workspace, STAGES))
    assert rerun.exit_code == 0 and "[run]" not in rerun.output, rerun.output


def test_the_baseline_is_an_input_in_the_cache_key():
    plain = _graph(STAGES.replace("against: train, bench_imgsz: 32, pairs: 4", "bench_imgsz: 32"))
    against = _graph(STAGES)
    assert against.nodes["bench"].inputs == {"baseline": "train"}
    assert against.nodes["bench"].identity["inputs"] == {"baseline": against.nodes["train"].cache_key}
    # a benchmark without a baseline keeps the key it had before `against` existed
    assert "inputs" not in plain.nodes["bench"].identity
    assert not {"against", "pairs"} & set(plain.nodes["bench"].identity["config"])
    assert plain.nodes["bench"].cache_key != against.nodes["bench"].cache_key
    # the baseline enters by its key, not its name: renaming the baseline stage keeps the key
    renamed = _graph(STAGES.replace("onnx", "fp32_file"))
    assert renamed.nodes["bench_file"].cache_key == against.nodes["bench_file"].cache_key


def test_a_bad_baseline_is_a_located_error_and_creates_nothing(workspace: Path):
    cases = {
        "  bench: {type: benchmark, from: int8, against: trian}\n": "no stage named 'trian'",
        "  bench: {type: benchmark, from: int8, against: bench}\n": "is this stage itself",
        "  bench: {type: benchmark, from: int8, against: later}\n  later: {type: benchmark, from: bench}\n": (
            "descends from 'bench'"
        ),
        "  bench: {type: benchmark, from: int8, against: int8, pairs: 1}\n": "pairs",
    }
    base = "  train: {type: train, epochs: 1}\n  int8: {type: quantize, from: train}\n"
    for stages, message in cases.items():
        path = write_recipe(workspace, base + stages)
        result = cli("run", path)
        line = 1 + (TINY_CLS.format(name="tiny", stages=base + stages).splitlines().index(stages.splitlines()[0]))
        assert result.exit_code == 2 and message in result.output, result.output
        assert f"recipe.yaml:{line}:" in result.output, result.output
        assert count_runs(workspace / "mlflow.db") == 0


@pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
def test_cpu_isa_times_in_a_child_process_under_the_cap(workspace: Path):
    """cpu_isa: the timings run in a child whose ONEDNN_MAX_CPU_ISA is the cap (the child reports what it ran
    under, and time_files_capped refuses an answer from any other), and the stage logs the same metrics."""
    stages = (
        "  train: {type: train, epochs: 1}\n"
        "  ov: {type: quantize, backend: openvino, calibration_images: 16}\n"
        "  bench: {type: benchmark, from: ov, bench_imgsz: 32, cpu_isa: avx2, against: train, pairs: 2}\n"
        "  native: {type: benchmark, from: ov, bench_imgsz: 32}\n"
    )
    result = cli("run", write_recipe(workspace, stages))
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[T.NODE_ID]: r for r in stage_runs(local_uri(workspace))}
    capped, native = runs["bench"].data, runs["native"].data
    assert capped.params["cpu_isa"] == "avx2" and capped.metrics["openvino_runtime"] == 1.0
    assert capped.metrics["latency_ms_t1_32px"] > 0 and capped.metrics["speedup_t1_32px"] > 0
    assert set(native.metrics) <= set(capped.metrics)  # the same names, plus the speedup
    # a cap is part of the key; native keeps the key benchmarks had before cpu_isa existed
    graph = _graph(stages)
    assert graph.nodes["bench"].identity["config"]["cpu_isa"] == "avx2"
    assert "cpu_isa" not in graph.nodes["native"].identity["config"]


def test_an_unknown_cpu_isa_is_refused_before_any_process_starts():
    spec = TimingSpec(files={32: "model.onnx"}, runtime="auto", threads=[1], runs=50, warmup=1, batch=0)
    with pytest.raises(ValueError, match="not one of"):
        time_files_capped(spec, "sse2")
