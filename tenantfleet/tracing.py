"""Optional OpenTelemetry (``pip install tenantfleet[otel]``, ``tracing = true``): a span per
run in the producer, a span per tenant attempt in the workers, under it.

tenantfleet only makes spans, through the global tracer provider: the application (or
``opentelemetry-instrument``) chooses the exporter. The run's context travels to the workers in
each task's ``trace`` argument (W3C ``traceparent``), only when tracing is on. Attributes follow
the OpenTelemetry database conventions: ``db.system.name`` = ``postgresql``, ``db.namespace`` =
``{database}|{schema}`` (the tenant's database and schema), ``db.operation.name`` = ``migrate``;
errors are recorded on the span.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

Carrier = dict[str, str]
_carrier: ContextVar[Carrier | None] = ContextVar("tenantfleet_trace_carrier", default=None)
TRACER = "tenantfleet"


def _api() -> Any:
    """The ``opentelemetry`` API, or None when it is not installed."""
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return None
    return (trace, propagate, context)


def carrier() -> Carrier | None:
    """The current run span's context, for the tasks being sent (None: not tracing)."""
    return _carrier.get()


@contextmanager
def run_span(enabled: bool, name: str, **attributes: Any) -> Iterator[None]:
    """A span for a run (``enabled``: the ``tracing`` setting), whose context the tasks sent
    inside the block carry."""
    api = _api() if enabled else None
    if api is None:
        yield
        return
    trace, propagate, _ = api
    with trace.get_tracer(TRACER).start_as_current_span(name, attributes=attributes):
        found: Carrier = {}
        propagate.inject(found)
        token = _carrier.set(found)
        try:
            yield
        finally:
            _carrier.reset(token)


@dataclass
class Attempt:
    """What the worker adds to an attempt's span as it learns it."""

    attributes: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


@contextmanager
def attempt_span(carrier: Carrier | None, name: str, **attributes: Any) -> Iterator[Attempt]:
    """A span for one tenant attempt, a child of the run's (``carrier``); none without one or
    without OpenTelemetry."""
    found = Attempt(dict(attributes))
    api = _api() if carrier else None
    if api is None:
        yield found
        return
    trace, propagate, _ = api
    parent = propagate.extract(carrier)
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.CLIENT, record_exception=False
    ) as span:
        try:
            yield found
        except BaseException as exc:
            found.error = found.error or exc
            raise
        finally:
            span.set_attributes({k: v for k, v in found.attributes.items() if v is not None})
            if found.error is not None:
                span.record_exception(found.error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(found.error)[:200]))
