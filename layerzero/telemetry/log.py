"""A JSON log formatter that keeps the structured ``extra`` fields LayerZero attaches to its records
(selection changes on ``layerzero.selection``, reloads on ``layerzero.hot_reload``), so log pipelines
get fields instead of parsing messages.

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("layerzero").addHandler(handler)
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["JsonFormatter"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the record's extra fields, and the
    exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=False)
