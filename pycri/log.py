"""structlog set-up: JSON, one event a line, on stderr."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# by method name; the threshold is a processor (not the bound logger's class) so SIGHUP can change it in place
_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}
_threshold = [logging.INFO]


def _filter_level(logger, method_name: str, event_dict):
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _threshold[0]:
        raise structlog.DropEvent
    return event_dict


def set_level(level: str) -> None:
    """Change the level of every logger, already made or not (config reload)."""
    _threshold[0] = _LEVELS[level]


def enabled(level: str) -> bool:
    """Whether lines of this level are written now (to skip building a line that would be dropped)."""
    return _LEVELS[level] >= _threshold[0]


def setup(level: str = "info") -> None:
    set_level(level)
    structlog.configure(
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(component=name)
