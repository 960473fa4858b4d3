"""Screenshots of MLflow's web UI comparing a recipe's stages, for the README, and the text a person sees there.

Does what a user does after the quickstart, in a temporary folder: `recipe run` twice (the second time with one
value changed, so two recipe runs overlay and the shared stages show as reused) into the default local store,
then `recipe ui`, which serves that store with `mlflow server` on a free loopback port and prints the link to
the recipe's comparison. A real headless Chromium (Debian's `chromium`, through Playwright: Playwright's own
browser download needs the internet) opens that link first and records what it shows before any click, then
the other pages. Writes to --out:

  charts.png        where `recipe ui`'s link lands: the chart view, each recipe run's pipeline/* charts (one step
                    per stage), the two runs overlaid (MLflow's assistant panel closed)
  runs.png          the runs table, recipe runs expanded to their stage runs, the stages' metrics as columns
  prune-steps.png   a prune stage's run page showing its prune_steps.png artifact
  pages.json        per page: URL, visible text and images (alt text) (what a test checks), and what MLflow's API
                    holds for the same runs (names, metrics), to compare the page against; `recipe ui`'s exit
                    code after Ctrl-C; the seconds each step took

    python scripts/ui_screenshot.py --out docs/mlflow-ui                       # the tiny built-in recipe
    python scripts/ui_screenshot.py --out docs/mlflow-ui --recipe recipes/resnet18_depgraph.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# the quickstart's stages (train, iterative prune, finetune, ONNX) at test size: lenet on 32 px shapes
TINY = """\
version: 1
name: quickstart-tiny
description: The quickstart's stages at test size (LeNet, generated shapes, DepGraph in 2 steps, fine-tune, ONNX).
seed: 0
model: lenet
data: builtin:shapes-cls?train=64&val=32&imgsz=32
defaults:
  imgsz: 32
  batch: 16
stages:
  train:
    type: train
    epochs: 3
    lr: 0.05
  prune:
    type: prune
    method: depgraph
    ratio: 0.5
    steps: 2
    finetune_epochs: 1
  finetune:
    type: finetune
    epochs: 1
  onnx:
    type: export
"""
# Chromium flags that work in containers and keep it off the network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1800, "height": 760}
ML_VIEW = "workflowType=machine_learning"  # opens the "Model training" view instead of the GenAI overview
PAGES = ("landing", "runs", "prune_steps", "models")
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def find_chromium() -> str | None:
    """Debian's `chromium` first; any Chrome-like binary on PATH otherwise."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@contextmanager
def timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        seconds[step] = round(time.monotonic() - start, 1)


@contextmanager
def recipe_ui(recipe: Path, folder: Path, outcome: dict[str, Any]) -> Iterator[str]:
    """`recipe ui RECIPE` in `folder`, as a user would start it; yields the link it prints. On exit it gets Ctrl-C
    (SIGINT) and its exit code goes into outcome["exit_code"]."""
    command = [sys.executable, "-m", "recipe_runner.cli", "ui", str(recipe), "--no-browser"]
    print("$", " ".join(command[1:]), flush=True)
    log = (folder / "ui.log").open("w")
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        link = _first_link(proc.stdout, time.time() + 180)
        if link is None:
            proc.kill()
            raise RuntimeError("recipe ui printed no link:\n" + (folder / "ui.log").read_text()[-3000:])
        print(link, flush=True)
        yield link
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            outcome["exit_code"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            outcome["exit_code"] = proc.wait()
        log.close()


def _first_link(stdout: IO[str], deadline: float) -> str | None:
    """The first line that is a link, read until the process ends or the deadline passes."""
    for line in stdout:
        if line.startswith("http"):
            return line.strip()
        if time.time() > deadline:
            break
    return None


def run_recipe(recipe: Path, overrides: list[str], folder: Path) -> None:
    """`recipe run` in a subprocess in `folder`, as a user would (the store: folder/mlflow.db); its output is kept
    in folder/run-N.log."""
    command = [sys.executable, "-m", "recipe_runner.cli", "run", str(recipe)]
    for override in overrides:
        command += ["--set", override]
    log = folder / f"run-{len(list(folder.glob('run-*.log')))}.log"
    print("$", " ".join(command[1:]), flush=True)
    with log.open("w") as out:
        done = subprocess.run(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    if done.returncode != 0:
        raise RuntimeError(f"recipe run failed ({done.returncode}):\n" + log.read_text()[-3000:])


def records(uri: str) -> dict[str, Any]:
    """What MLflow's API holds: the experiment, the recipe runs and their stage runs (names, metrics, tags)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        experiments, "tags.`recipe_runner.role` = 'recipe'", order_by=["attributes.start_time ASC"]
    )
    out: dict[str, Any] = {"experiment_id": parents[0].info.experiment_id, "recipe_runs": []}
    for parent in parents:
        children = client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        out["recipe_runs"].append(
            {
                "run_id": parent.info.run_id,
                "name": parent.info.run_name,
                "metrics": parent.data.metrics,
                "stages": [
                    {
                        "run_id": c.info.run_id,
                        "name": c.info.run_name,
                        "metrics": c.data.metrics,
                        "type": c.data.tags.get("recipe_runner.stage_type"),
                        "role": c.data.tags.get("recipe_runner.role"),
                        "artifacts": [a.path for a in client.list_artifacts(c.info.run_id)],
                    }
                    for c in children
                ],
            }
        )
    return out


def _settle(page: Any, ms: int = 1500) -> None:
    """Let the single-page app finish fetching and drawing (network idle, then a little time for charts)."""
    try:
        page.wait_for_load_state("networkidle", timeout=5000)
    except Exception:  # a long poll keeps the network busy: the wait below still applies
        pass
    page.wait_for_timeout(ms)


def _close_assistant(page: Any) -> None:
    """MLflow 3.17 opens its chat assistant beside the runs; it hides half the table."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


def _widen(page: Any, col_id: str, pixels: int) -> None:
    """Drag a table column's right edge (ag-grid's resize handle): recipe run names do not fit the default width."""
    box = page.locator(f".ag-header-cell[col-id='{col_id}']").first.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=8)
    page.mouse.up()


def _shoot(page: Any, path: Path, elements_js: str) -> None:
    """A screenshot down to the lowest of `elements_js` (a JavaScript array of elements): no empty page below."""
    bottom = page.evaluate(f"Math.max(...({elements_js}).map(e => e.getBoundingClientRect().bottom))")
    page.screenshot(
        path=str(path),
        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": min(VIEWPORT["height"], bottom + 24)},
    )


def _page_record(page: Any) -> dict[str, Any]:
    images = page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('alt') || '')")
    return {"url": page.url, "text": page.inner_text("body"), "image_alts": [a for a in images if a]}


def screenshots(
    link: str, facts: dict[str, Any], out: Path, chromium: str, wanted: tuple[str, ...] = PAGES
) -> dict[str, Any]:
    """Drive Chromium from `recipe ui`'s link (recorded before any click) to the other pages in `wanted`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    uri = link.split("/#/")[0]
    experiment = facts["experiment_id"]
    parents = facts["recipe_runs"]
    pages: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        # where the link lands, as a first-time visitor sees it: the chart view of the recipe runs' pipeline/*
        # metrics, recipe runs collapsed and overlaid
        start = time.monotonic()
        page.goto(link)
        # every recipe run's line in the charts' legends, "<run name> (pipeline/<metric>)", or what came in 90 s
        # (the test then says what is missing); size_mb is left out of the charts by recipe ui's view
        legends = [
            f"{r['name']} ({k})"
            for r in parents
            for k in r["metrics"]
            if k.startswith("pipeline/") and k != "pipeline/size_mb"
        ]
        try:
            page.wait_for_function(
                "texts => texts.every(t => document.body.innerText.includes(t))", arg=legends, timeout=90000
            )
        except PlaywrightTimeout:
            pass
        pages["landing"] = {**_page_record(page), "seconds": round(time.monotonic() - start, 1)}
        _close_assistant(page)
        # room for the charts and, later, for the table's columns: the sidebar folds (kept for the next pages)
        page.locator("button[data-component-id='mlflow_header.toggle_sidebar_button']").click()
        _settle(page, 1500)
        _shoot(
            page,
            out / "charts.png",
            "[...document.querySelectorAll('*')].filter(e => e.children.length === 0 && "
            "e.textContent.includes('(pipeline/'))",
        )

        if "runs" in wanted:
            # the same shared view as a table: it selected the stages' metrics, action and overrides as columns
            page.goto(link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"))
            page.wait_for_selector(f"text={parents[-1]['name']}", timeout=60000)
            page.wait_for_timeout(500)  # the header's column widths
            _close_assistant(page)
            # room for the columns that tell the stages apart: the Models column narrows
            _widen(page, "attributes.`Run Name`", 90)
            _widen(page, "attributes.`Models`", -80)
            _widen(page, "params.`overrides`", 90)
            # expand every recipe run to its stage runs (the button sits in the parent's name cell)
            expand = page.locator("button[data-component-id$='runnamecellrenderer.tsx_46']")
            for i in range(expand.count()):
                expand.nth(i).click()
            page.wait_for_selector(f"text={parents[-1]['stages'][-1]['name']}")
            page.mouse.click(VIEWPORT["width"] // 2, VIEWPORT["height"] - 120)  # off the rows: no focus outline
            _settle(page)
            _shoot(page, out / "runs.png", "[...document.querySelectorAll('.ag-row')]")
            pages["runs"] = _page_record(page)

        if "prune_steps" in wanted:
            prune = next(s for p in parents for s in p["stages"] if "prune_steps.png" in s["artifacts"])
            page.goto(f"{uri}/#/experiments/{experiment}/runs/{prune['run_id']}/artifacts/prune_steps.png?{ML_VIEW}")
            # the artifact viewer draws the image from a blob URL, with the file name as its alt text
            page.wait_for_selector("img[alt='prune_steps.png']", timeout=60000)
            _settle(page)
            _shoot(page, out / "prune-steps.png", "[...document.querySelectorAll(\"img[alt='prune_steps.png']\")]")
            pages["prune_steps"] = _page_record(page)

        if "models" in wanted:
            page.goto(f"{uri}/#/experiments/{experiment}/models?{ML_VIEW}")
            _settle(page, 3000)
            pages["models"] = _page_record(page)
        browser.close()
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and pages.json")
    parser.add_argument("--recipe", type=Path, help="recipe to run (default: the quickstart's stages at test size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for both runs")
    parser.add_argument(
        "--second", action="append", default=None, help="override for the second run (default: stages.prune.ratio=0.3)"
    )
    parser.add_argument(
        "--pages",
        default=",".join(PAGES),
        help=f"pages to visit after the landing one (default: all of {','.join(PAGES)})",
    )
    parser.add_argument("--chromium", default=find_chromium(), help="Chromium executable (default: from PATH)")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    wanted = tuple(args.pages.split(","))
    if unknown := set(wanted) - set(PAGES):
        parser.error(f"unknown --pages {', '.join(sorted(unknown))} (known: {', '.join(PAGES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    ui: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rr-ui-") as tmp:
        folder = Path(tmp)
        recipe = args.recipe.resolve() if args.recipe else folder / "recipe.yaml"
        if not args.recipe:
            recipe.write_text(TINY)
        with timed(seconds, "recipe run"):
            run_recipe(recipe, args.overrides, folder)
        with timed(seconds, "recipe run --set"):
            run_recipe(recipe, args.overrides + (args.second or ["stages.prune.ratio=0.3"]), folder)
        start = time.monotonic()
        with timed(seconds, "recipe ui, start to exit"), recipe_ui(recipe, folder, ui) as link:
            seconds["recipe ui, start to link"] = round(time.monotonic() - start, 1)
            facts = records(link.split("/#/")[0])
            with timed(seconds, "Chromium, every page"):
                pages = screenshots(link, facts, args.out, args.chromium, wanted)
            ui["link"] = link
    report = {"records": facts, "pages": pages, "ui": ui, "seconds": seconds}
    (args.out / "pages.json").write_text(json.dumps(report, indent=1))
    print("seconds:", json.dumps(seconds))
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return 0 if ui["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
