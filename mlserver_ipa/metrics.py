"""Prometheus metrics of the variant runtime, served on MLServer's metrics endpoint (`/metrics`).

MLServer serves prometheus_client's default registry when `parallel_workers` is 0 (the setting this project
uses: the runtime runs its own batcher in the server process). `mlserver.register`/`mlserver.log` are not
used: they only make histograms without chosen buckets or labels, in a registry that MLServer 1.7.1 does
not serve with `parallel_workers: 0`.

Names and labels (every series has `model`; per-variant ones also `variant`):

    ipa_request_latency_seconds      histogram  arrival here -> answer, served requests
    ipa_queue_wait_seconds           histogram  arrival -> batch dispatch
    ipa_service_time_seconds         histogram  one onnxruntime call (a batch)
    ipa_batch_size                   histogram  rows per onnxruntime call
    ipa_requests_served_total        counter    answered with outputs
    ipa_requests_dropped_total       counter    label reason="deadline" | "overloaded"
    ipa_deadline_misses_total        counter    served after their deadline (answered 504 with on_late: drop)
    ipa_queue_length                 gauge      requests waiting
    ipa_active_variant               gauge      1 for the active variant, 0 for the others
    ipa_threads                      gauge      onnxruntime intra-op threads (the cores the replica uses)
    ipa_batch_size_limit             gauge      configured batch size
    ipa_variant_switches_total       counter    session swaps (variant or threads)
"""

from __future__ import annotations

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class RuntimeMetrics:
    """The metric families; one set per registry, shared by every runtime model in the process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        mv = ["model", "variant"]
        self.latency = Histogram(
            "ipa_request_latency_seconds", "Arrival to answer of served requests", mv,
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "ipa_queue_wait_seconds", "Arrival to batch dispatch", mv, buckets=LATENCY_BUCKETS, registry=registry
        )
        self.service_time = Histogram(
            "ipa_service_time_seconds", "Duration of one onnxruntime call (one batch)", mv,
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "ipa_batch_size", "Rows per onnxruntime call", mv, buckets=BATCH_BUCKETS, registry=registry
        )
        self.served = Counter("ipa_requests_served", "Requests answered with outputs", mv, registry=registry)
        self.dropped = Counter(
            "ipa_requests_dropped", "Requests rejected: reason=deadline (cannot be met) or overloaded (queue full)",
            [*mv, "reason"], registry=registry,
        )
        self.misses = Counter("ipa_deadline_misses", "Requests served after their deadline", mv, registry=registry)
        self.queue_length = Gauge("ipa_queue_length", "Requests waiting", ["model"], registry=registry)
        self.active_variant = Gauge("ipa_active_variant", "1 for the active variant, 0 for the others", mv,
                                    registry=registry)
        self.threads = Gauge("ipa_threads", "onnxruntime intra-op threads", ["model"], registry=registry)
        self.batch_limit = Gauge("ipa_batch_size_limit", "Configured batch size (rows)", ["model"], registry=registry)
        self.switches = Counter("ipa_variant_switches", "Session swaps (variant or threads)", ["model"],
                                registry=registry)


@cache
def runtime_metrics(registry: CollectorRegistry = REGISTRY) -> RuntimeMetrics:
    """The metric families in `registry` (created once: Prometheus refuses a name registered twice)."""
    return RuntimeMetrics(registry)


class ModelMetrics:
    """The metrics of one served model: the families bound to its `model` label."""

    def __init__(self, model: str, variants: list[str], families: RuntimeMetrics | None = None) -> None:
        self.model = model
        self.variants = variants
        self.f = families or runtime_metrics()

    def configured(self, variant: str, threads: int, batch_size: int) -> None:
        for v in self.variants:
            self.f.active_variant.labels(self.model, v).set(1 if v == variant else 0)
        self.f.threads.labels(self.model).set(threads)
        self.f.batch_limit.labels(self.model).set(batch_size)

    def switched(self) -> None:
        self.f.switches.labels(self.model).inc()

    def queue(self, length: int) -> None:
        self.f.queue_length.labels(self.model).set(length)

    def batch(self, variant: str, rows: int, seconds: float) -> None:
        self.f.batch_size.labels(self.model, variant).observe(rows)
        self.f.service_time.labels(self.model, variant).observe(seconds)

    def served(self, variant: str, queue_wait: float, latency: float, late: bool) -> None:
        self.f.served.labels(self.model, variant).inc()
        self.f.queue_wait.labels(self.model, variant).observe(queue_wait)
        self.f.latency.labels(self.model, variant).observe(latency)
        if late:
            self.f.misses.labels(self.model, variant).inc()

    def dropped(self, variant: str, reason: str) -> None:
        self.f.dropped.labels(self.model, variant, reason).inc()
