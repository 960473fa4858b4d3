"""Keep Ultralytics and MLflow from reaching the network or the user's home, before they are imported."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def configure_offline(cache: Path) -> None:
    config_dir = cache / "ultralytics-config"
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ultralytics' dataset check wants Arial.ttf for plots and would download it: give it matplotlib's DejaVu Sans.
    font = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        try:
            import matplotlib

            source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            font.parent.mkdir(parents=True, exist_ok=True)
            # copy, then rename: a second process starting at the same time never reads a half-copied font
            tmp = font.with_name(f".{font.name}.{os.getpid()}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, font)
        except (ImportError, OSError):
            pass
