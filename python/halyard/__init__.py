"""The Python client of a Halyard cluster (see ``docs/python.md``)."""

from .client import Client, HalyardError, JobFailed
from .spec import dumps as spec_to_toml

__all__ = ["Client", "HalyardError", "JobFailed", "spec_to_toml"]
__version__ = "0.1.0"
