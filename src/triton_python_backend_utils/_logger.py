"""``Logger``: Triton's model logging API, routed to Python ``logging``."""

from __future__ import annotations

import enum
import logging
from typing import ClassVar

__all__ = ["Logger"]

_LOGGER_NAME = "torchtide.model"


class _LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_TO_LOGGING = {
    _LogLevel.INFO: logging.INFO,
    _LogLevel.WARNING: logging.WARNING,
    _LogLevel.ERROR: logging.ERROR,
    _LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """Logs to the ``torchtide.model`` logger; VERBOSE maps to ``logging.DEBUG``.

    Nothing is configured at import time: handlers and levels are the server's.
    """

    LogLevel: ClassVar[type[_LogLevel]] = _LogLevel
    INFO: ClassVar[_LogLevel] = _LogLevel.INFO
    WARNING: ClassVar[_LogLevel] = _LogLevel.WARNING
    ERROR: ClassVar[_LogLevel] = _LogLevel.ERROR
    VERBOSE: ClassVar[_LogLevel] = _LogLevel.VERBOSE

    @staticmethod
    def _emit(message: str, level: int, stacklevel: int) -> None:
        try:
            py_level = _TO_LOGGING[_LogLevel(level)]
        except ValueError:
            raise ValueError(f"invalid log level {level!r}") from None
        logger = logging.getLogger(_LOGGER_NAME)
        if logger.isEnabledFor(py_level):
            logger.log(py_level, "%s", message, stacklevel=stacklevel)

    @staticmethod
    def log(message: str, level: int = _LogLevel.INFO) -> None:
        Logger._emit(message, level, 3)

    @staticmethod
    def log_info(message: str) -> None:
        Logger._emit(message, _LogLevel.INFO, 3)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger._emit(message, _LogLevel.WARNING, 3)

    @staticmethod
    def log_error(message: str) -> None:
        Logger._emit(message, _LogLevel.ERROR, 3)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger._emit(message, _LogLevel.VERBOSE, 3)
