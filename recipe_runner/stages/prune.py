"""prune: reach a target ratio (or a MACs/params target) in N steps, fine-tuning between steps, guarded by a
maximum metric drop.

The loop is method-independent (the reference workflow's loop); what one step does
comes from the pruning-method registry, and the step ratio that meets a MACs/params
target from pruning/targets.py. Progress is checkpointed after every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import Field

from ..pruning import METHODS, CostTarget, cost_target, plan_steps, reach_target
from ..pruning.targets import REPORT_BELOW
from ._base import STAGES, StageContext, StageOutput, StageType, distillation

# Union[...] of a runtime tuple: the `X | Y` spelling cannot be built from a list of registered types
PruneConfig = Annotated[
    Union[tuple(entry.config for _, entry in METHODS.items())],  # type: ignore[misc]  # noqa: UP007
    Field(discriminator="method"),
]


def run_prune(ctx: StageContext, config) -> StageOutput:
    method = METHODS.get(config.method)
    target = cost_target(config)
    family = ctx.family
    model = ctx.parent_model
    primary = family.primary_metric
    start_step, history = 0, []
    baseline = None
    # family.evaluate of the model held in `model` with this config, when this process measured it: the engine
    # then does not evaluate the output again
    evaluation: dict[str, float] | None = None
    if ctx.resume_state is not None:
        model = family.rebuild(ctx.resume_state["model"])
        start_step = int(ctx.resume_state["epoch"])
        history = list(ctx.resume_state["history"])
        baseline = float(ctx.resume_state["baseline"])
    if baseline is None:
        base_eval = evaluation = family.evaluate(model, ctx.data, config)
        baseline = base_eval[primary]
        history.append(
            {
                "step": 0,
                **_shape_metrics(family, model, config),
                "metric_before_ft": baseline,
                "metric_after_ft": baseline,
            }
        )
        ctx.log_metrics(
            {f"step/{primary}": baseline, "step/macs": history[0]["macs"], "step/params": history[0]["params"]}, step=0
        )
    epochs_trained = 0
    stopped_early = False
    # loaded only when a step fine-tunes (a prune without fine-tuning has nothing to distil)
    teach = distillation(ctx, config) if config.finetune_epochs else None
    plans = plan_steps(config.ratio, config.steps)
    advance = ctx.progress(f"prune {config.method}", len(plans))
    advance(start_step)
    for plan in plans[start_step:]:
        previous, previous_evaluation = copy.deepcopy(model), evaluation
        if target is None:
            model = method.prune_step(model, family, ctx.data, config, plan)
        else:
            model, plan = reach_target(
                model,
                family,
                ctx.data,
                config,
                method,
                plan,
                target,
                base_cost=history[0][target.metric],
                done=history[-1].get("ratio", 0.0),
            )
        if method.layer_table is not None:
            _log_table(ctx, method.layer_table(model), f"layers_step{plan.step}.json")
        evaluation = family.evaluate(model, ctx.data, config)
        before = after = evaluation[primary]
        if config.finetune_epochs:
            result = family.train(
                model, ctx.data, config, config.finetune_epochs, ctx.nested(f"step{plan.step}"), distill=teach
            )
            model, epochs_trained = result.model, epochs_trained + result.epochs_trained
            # the trainer's own last evaluation of these weights where it has one (torchvision), else one pass
            evaluation = result.evaluation or family.evaluate(model, ctx.data, config)
            after = evaluation[primary]
        row = {
            "step": plan.step,
            **_shape_metrics(family, model, config),
            "ratio": plan.cumulative,
            "metric_before_ft": before,
            "metric_after_ft": after,
        }
        ctx.log_metrics(
            {
                f"step/{primary}_before_ft": before,
                f"step/{primary}": after,
                "step/macs": row["macs"],
                "step/params": row["params"],
                "step/ratio": plan.cumulative,
            },
            step=plan.step,
        )
        if config.max_map_drop is not None and baseline - after > config.max_map_drop:
            model = previous
            evaluation = previous_evaluation
            stopped_early = True
            row["rejected"] = True
            history.append(row)
            break
        history.append(row)
        ctx.save_epoch_state(
            {"model": family.describe(model), "epoch": plan.step, "history": history, "baseline": baseline}, plan.step
        )
        advance(1)
    ctx.log_plot(_plot(history, primary), "prune_steps.png")
    kept = [r for r in history if not r.get("rejected")]
    if stopped_early:
        drop = baseline - history[-1]["metric_after_ft"]
        ctx.warn(
            f"stopped at step {history[-1]['step']} of {config.steps}: {primary} fell by {drop:.4f} > max_map_drop "
            f"{config.max_map_drop}; keeping step {kept[-1]['step']}"
            + (" (the unpruned model)" if kept[-1]["step"] == 0 else "")
        )
    elif method.structured and kept[-1]["macs"] >= history[0]["macs"] and kept[-1]["params"] >= history[0]["params"]:
        ctx.warn("pruning removed nothing (ratio too small for these widths, or round_to too large?)")
    metrics = {
        "steps_done": float(kept[-1]["step"]),
        "stopped_early": float(stopped_early),
        f"baseline_{primary}": baseline,
    }
    if target is not None:
        metrics.update(_target_metrics(ctx, target, kept[-1], history[0], stopped_early))
    return StageOutput(model=model, metrics=metrics, epochs_trained=epochs_trained, evaluation=evaluation)


def _log_table(ctx: StageContext, rows: list[dict], name: str) -> None:
    """The method's per-layer table (e.g. low-rank's ranks) as a JSON artifact in the stage's `layers/` folder."""
    import json

    path = ctx.workdir / name
    path.write_text(json.dumps(rows, indent=1))
    ctx.log_artifact(path, "layers")


def _target_metrics(ctx: StageContext, target: CostTarget, last: dict, start: dict, stopped: bool) -> dict[str, float]:
    """The channel ratio chosen for a MACs/params target and the fraction of the parent's cost kept; warns when
    the layer widths (or round_to) allowed nothing near the target."""
    reached = last[target.metric] / start[target.metric]
    if not stopped and reached < target.fraction * (1 - REPORT_BELOW):
        ctx.warn(
            f"{target.key} {target.fraction:g}: reached {reached:.4f}, the nearest below it that these layer "
            "widths allow (is round_to large?)"
        )
    return {"chosen_ratio": last.get("ratio", 0.0), "target_reached": reached}


def _shape_metrics(family, model, config) -> dict[str, float]:
    cost = family.cost(model, config.imgsz)
    return {"macs": cost["macs"], "params": cost["params"]}


def _plot(history: list[dict], primary: str):
    """MACs and the primary metric per step, as the reference workflow plots them."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["metric_before_ft"] for r in history], "o--", label=f"{primary} after pruning")
    ax.plot(steps, [r["metric_after_ft"] for r in history], "o-", label=f"{primary} after fine-tuning")
    ax.set_xlabel("prune step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(primary)
    ax.legend(loc="lower left")
    ax2 = ax.twinx()
    base_macs = history[0]["macs"] or 1.0
    ax2.plot(steps, [r["macs"] / base_macs for r in history], "s:", color="tab:red", label="MACs ratio")
    ax2.set_ylabel("MACs / original MACs")
    ax2.set_ylim(0, 1.05)
    ax2.legend(loc="upper right")
    fig.tight_layout()
    return fig


def check_prune(config, skeleton: Callable[[], Any]) -> None:
    """The method's own check of the model (e.g. slim needs BatchNorm), before anything runs."""
    check = METHODS.get(config.method).check
    if check is not None:
        check(config, skeleton)


STAGES.register("prune")(
    StageType(
        PruneConfig,
        run_prune,
        check=check_prune,  # type: ignore[arg-type]
        description="prune the parent model",
    )
)
