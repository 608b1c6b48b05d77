"""Structured logging: every line on stderr is one JSON object, configured once at the edge.

The proxy's own lines come from structlog. The libraries' stdlib logging (botocore's "Found
credentials…", grpc, aiohttp, OpenTelemetry's export errors) and Python's warnings go through
structlog's ProcessorFormatter, so they are JSON too. gRPC core's C logging, which writes to
stderr by itself, is silenced unless GRPC_VERBOSITY asks for it (service/cli/__init__.py).
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as one JSON object per line."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # At debug level the libraries dump whole requests (botocore logs bodies): attribute
    # documents are patient data, so they never log below INFO.
    root.setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)
