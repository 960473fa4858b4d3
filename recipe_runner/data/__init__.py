"""Dataset resolution: `builtin:<name>?k=v` datasets generated offline, or a user path."""

from ._layout import CLASSIFY_IMAGE_SUFFIXES, DETECT_IMAGE_SUFFIXES, dataset_root, listed_images
from ._resolve import BUILTINS, DataError, DataSource, cache_root, fingerprint_data, resolve_data

__all__ = [
    "BUILTINS",
    "CLASSIFY_IMAGE_SUFFIXES",
    "DETECT_IMAGE_SUFFIXES",
    "DataError",
    "DataSource",
    "cache_root",
    "dataset_root",
    "fingerprint_data",
    "listed_images",
    "resolve_data",
]
