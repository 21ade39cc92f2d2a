"""Triton's logging settings (the /v2/logging extension), applied to Python logging."""

from __future__ import annotations

import logging
from typing import Any

from torchtide.errors import invalid_arg

_BOOL_KEYS = ("log_info", "log_warning", "log_error")
_FORMATS = ("default", "ISO8601")


class LogSettings:
    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        verbose: int = 0,
        info: bool = True,
        warning: bool = True,
        error: bool = True,
        fmt: str = "default",
        file: str = "",
    ) -> None:
        self.logger = logger or logging.getLogger("torchtide")
        self.values: dict[str, Any] = {
            "log_file": file,
            "log_info": info,
            "log_warning": warning,
            "log_error": error,
            "log_verbose_level": verbose,
            "log_format": fmt,
        }
        self._apply()

    def get(self) -> dict[str, Any]:
        return dict(self.values)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every key first, then apply all at once; unknown keys are an error."""
        new = dict(self.values)
        for key, value in changes.items():
            if key in _BOOL_KEYS:
                if not isinstance(value, bool):
                    raise invalid_arg(f"expecting a bool for '{key}', got {value!r}")
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise invalid_arg(
                        f"expecting a non-negative integer for '{key}', got {value!r}"
                    )
            elif key == "log_format":
                if value not in _FORMATS:
                    raise invalid_arg(
                        f"invalid log_format {value!r}; expected one of {list(_FORMATS)}"
                    )
            elif key == "log_file":
                if not isinstance(value, str):
                    raise invalid_arg(f"expecting a string for 'log_file', got {value!r}")
                if value != self.values["log_file"]:
                    raise invalid_arg(
                        "log_file cannot be changed over the network (a client could make the "
                        "server write any file); start the server with --log-file"
                    )
            else:
                raise invalid_arg(f"unknown logging setting '{key}'")
            new[key] = value
        self.values = new
        self._apply()
        return self.get()

    def _apply(self) -> None:
        v = self.values
        if v["log_verbose_level"] > 0:
            level = logging.DEBUG
        elif v["log_info"]:
            level = logging.INFO
        elif v["log_warning"]:
            level = logging.WARNING
        elif v["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 1
        self.logger.setLevel(level)


def model_table(index: list[dict[str, Any]]) -> str:
    """The model / version / status table tritonserver logs once started, from the repository
    index: one row per known version; a failed one reads `UNAVAILABLE: <reason>`. Models never
    loaded (explicit mode) are left out, as Triton leaves them out."""
    rows = [("Model", "Version", "Status")]
    for e in index:
        if "state" not in e:
            continue
        status = e["state"] + (f": {e['reason']}" if e.get("reason") else "")
        rows.append((e["name"], e.get("version") or "-", status))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for k, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)
