"""Dataset resolution: `builtin:<name>?k=v` datasets generated offline, or a user path."""
from ._resolve import DataSource, DataError, fingerprint_data, resolve_data

__all__ = ["DataError", "DataSource", "fingerprint_data", "resolve_data"]
