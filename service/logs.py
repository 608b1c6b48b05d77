"""Structured logging: JSON lines on stderr via structlog, configured once at the edge."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", json: bool = True) -> None:
    """Route structlog (and stdlib logging) to stderr as one JSON object per line."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Only third-party libraries log through stdlib logging, and at debug level they dump whole
    # requests (botocore logs bodies): attribute documents are patient data.
    logging.basicConfig(level=max(numeric, logging.INFO), stream=sys.stderr, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
