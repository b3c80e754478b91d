"""Logs and OpenTelemetry for the example app: ``--log-level``, ``--log-json``, and export over
OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Export needs the SDK and the OTLP exporter (``pip install opentelemetry-sdk
opentelemetry-exporter-otlp-proto-http``, and ``opentelemetry-instrumentation-fastapi`` for
the HTTP spans); without them the app says so once and runs without exporting. The usual
``OTEL_*`` variables apply (``OTEL_SERVICE_NAME``, default ``bank-account``;
``OTEL_EXPORTER_OTLP_HEADERS``, ...).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "export_telemetry", "instrument_app", "setup_logging"]

logger = logging.getLogger("examples.bank_account")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``exception`` (the traceback, when there is one) and, inside a recording
    span, its ``trace_id`` and ``span_id`` (to find the trace of a log line)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        line.update(_trace_ids())
        return json.dumps(line, default=str)


def _trace_ids() -> dict[str, str]:
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional
    except ImportError:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def setup_logging(level: str, *, as_json: bool = False, force: bool = True) -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, ...), as text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=force)


def export_telemetry(environ: Mapping[str, str] | None = None) -> bool:
    """Send traces and metrics over OTLP (HTTP) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
    return whether export is on. Missing packages are one WARNING, not an error."""
    env = os.environ if environ is None else environ
    endpoint = env.get(ENDPOINT)
    if not endpoint:
        return False
    try:
        from opentelemetry import metrics, trace  # noqa: PLC0415 - optional
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        otlp = "opentelemetry.exporter.otlp.proto.http"  # by name: not a typed dependency
        span_exporter = importlib.import_module(f"{otlp}.trace_exporter").OTLPSpanExporter
        metric_exporter = importlib.import_module(f"{otlp}.metric_exporter").OTLPMetricExporter
    except ImportError as error:
        logger.warning(
            "%s is set but OpenTelemetry export is not installed (%s): pip install "
            "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http; not exporting",
            ENDPOINT,
            error,
        )
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "bank-account")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(metric_exporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    logger.info("exporting traces and metrics over OTLP to %s", endpoint)
    return True


def instrument_app(app: object) -> bool:
    """Add FastAPI's own spans (one per request, the parent of the command's) when
    ``opentelemetry-instrumentation-fastapi`` is installed; return whether it was."""
    try:
        instrumentation = importlib.import_module("opentelemetry.instrumentation.fastapi")
    except ImportError:
        logger.warning(
            "HTTP spans need opentelemetry-instrumentation-fastapi; commands are traced alone"
        )
        return False
    instrumentation.FastAPIInstrumentor.instrument_app(app)
    return True
