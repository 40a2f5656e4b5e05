"""Job specs as Python values: read a TOML spec, make its data paths absolute, write TOML.

A spec may be given as a file, as TOML text or as a dict; the scheduler reads a relative
path from its own folder, so the client resolves them first, as ``halyard submit`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, List, Mapping

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - older Pythons
    import tomli as _toml  # type: ignore[no-redef]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def loads(text: str) -> Dict[str, Any]:
    """Parse TOML text into a dict."""
    return _toml.loads(text)


def _resolve(location: str, base: str) -> str:
    """A spec's data location with a relative local path made absolute against ``base``."""
    if "://" in location or os.path.isabs(location) or not location.strip():
        return location
    folder = location.endswith("/")
    path = os.path.normpath(os.path.join(base, location))
    return path + "/" if folder else path


def resolve_paths(spec: Mapping[str, Any], base: str) -> Dict[str, Any]:
    """A copy of ``spec`` whose local data paths (``[data] source``,
    ``[[features.sources]] path``, ``[forecast] test_source``) are absolute."""
    out = json.loads(json.dumps(spec, default=str))
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        data["source"] = _resolve(data["source"], base)
    features = out.get("features")
    if isinstance(features, dict):
        for source in features.get("sources", []) or []:
            if isinstance(source, dict) and isinstance(source.get("path"), str):
                source["path"] = _resolve(source["path"], base)
    forecast = out.get("forecast")
    if isinstance(forecast, dict) and isinstance(forecast.get("test_source"), str):
        forecast["test_source"] = _resolve(forecast["test_source"], base)
    return out


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        # A JSON string is a TOML basic string (the same escapes).
        return json.dumps(v)
    if isinstance(v, Mapping):
        inner = ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"a job spec holds strings, numbers, booleans, lists and tables, not {type(v).__name__}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _table(d: Mapping[str, Any], path: List[str], lines: List[str]) -> None:
    for k, v in d.items():
        if not isinstance(v, Mapping) and not _is_table_array(v):
            lines.append(f"{_key(str(k))} = {_value(v)}")
    for k, v in d.items():
        name = ".".join(_key(str(p)) for p in path + [str(k)])
        if isinstance(v, Mapping):
            lines.extend(["", f"[{name}]"])
            _table(v, path + [str(k)], lines)
        elif _is_table_array(v):
            for item in v:
                lines.extend(["", f"[[{name}]]"])
                _table(item, path + [str(k)], lines)


def dumps(spec: Mapping[str, Any]) -> str:
    """A spec dict as TOML text (tables as ``[section]``, lists of tables as ``[[...]]``)."""
    lines: List[str] = []
    _table(spec, [], lines)
    return "\n".join(lines).strip() + "\n"
