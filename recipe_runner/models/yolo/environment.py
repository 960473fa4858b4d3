"""Import Ultralytics offline and quiet, and give it dataset yamls it resolves the way users expect.

Everything that touches Ultralytics goes through `ultralytics_ready()` first, so:
- settings live in the runner's own YOLO_CONFIG_DIR with every integration (MLflow,
  W&B, ...) and analytics sync off: the runner owns MLflow logging;
- the Arial.ttf the dataset check wants is already there (offline.configure_offline);
- torch keeps using every core, although Ultralytics sets OMP_NUM_THREADS=1 at import.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

_INTEGRATIONS = ("clearml", "comet", "dvc", "hub", "mlflow", "neptune", "raytune", "tensorboard", "wandb", "sync")


@cache
def ultralytics_ready() -> None:
    """Configure the environment, import Ultralytics once, switch its integrations off."""
    from ...data import cache_root
    from ...offline import configure_offline

    configure_offline(cache_root())
    user_threads = os.environ.get("OMP_NUM_THREADS")
    import torch
    from ultralytics.utils import SETTINGS

    if user_threads is None:  # Ultralytics just set it to 1 for the whole process; keep torch on all cores
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    changes: dict[str, Any] = {k: False for k in _INTEGRATIONS if k in SETTINGS and SETTINGS[k] is not False}
    if changes:
        SETTINGS.update(changes)


def strip_integration_callbacks(instance: Any) -> None:
    """Remove every callback Ultralytics added from its integrations (MLflow, analytics events, platform)."""
    for event, funcs in instance.callbacks.items():
        instance.callbacks[event] = [f for f in funcs if not _is_integration(f)]


def _is_integration(func: Any) -> bool:
    module = getattr(func, "__module__", "") or ""
    return (module.startswith("ultralytics.utils.callbacks.") and not module.endswith(".base")) or module.startswith(
        "ultralytics.utils.events"
    )


def device_string(device: Any) -> str:
    """The recipe's device (cpu | 0 | "0" | cuda:0 | [0, 1]) as Ultralytics spells it: "0,1" trains with DDP."""
    if isinstance(device, (list, tuple)):
        return ",".join(str(d).removeprefix("cuda:") for d in device) if device else "cpu"
    return str(device)


def first_device_string(device: Any) -> str:
    """One device for work that does not spread over GPUs (validation): the first of a list."""
    if isinstance(device, (list, tuple)):
        return device_string(device[:1])
    return device_string(device)


def resolved_data_yaml(data: Any) -> str:
    """An absolute data.yaml for Ultralytics.

    Ultralytics resolves a relative `path:` against the working directory or its datasets
    folder; users expect it relative to the yaml's own folder. So we write a copy with an
    absolute `path:` and no `download:` key (nothing may download) into the cache.
    """
    import yaml

    from ...data import dataset_root

    source = Path(data.path)
    content = yaml.safe_load(source.read_text()) or {}
    # the one resolution the checks and the fingerprint use too (`~` expanded, relative to the yaml's folder)
    content["path"] = str(dataset_root(source, content).resolve())
    for split in ("train", "val", "test"):  # split entries too: Ultralytics would read '~/x' as a folder named ~
        entry = content.get(split)
        if isinstance(entry, (str, list)):
            expanded = [os.path.expanduser(str(e)) for e in (entry if isinstance(entry, list) else [entry])]
            content[split] = expanded if isinstance(entry, list) else expanded[0]
    content.pop("download", None)
    if "names" not in content and "nc" not in content:
        content["names"] = list(data.names)
    from ...data import cache_root

    folder = cache_root() / "yolo-data"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{data.fingerprint}.yaml"
    text = yaml.safe_dump(content, sort_keys=False)
    if not target.exists() or target.read_text() != text:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    return str(target)
