"""The monitor: what the running pipeline did since the adapter last looked, read from Prometheus metrics.

Every interval the adaptation loop asks a `MetricsSource` for an `Observation`: the arrival rate (mean over
the window, and per second for the load history the predictors read), the end-to-end and per-stage p99
latency, per stage the CPU its replicas used (for the `vpa` policy), requests answered with an error, dropped
by a replica and served after their deadline. Two sources give the same `Observation`:

    DirectSource       scrapes the router's and every replica's `/metrics` itself (the embedded default);
                       counters are differenced between scrapes, latencies come from histogram buckets
    PrometheusSource   asks a Prometheus server (`adapter.control.monitor_prometheus`) with PromQL `increase()`,
                       `rate()` and `histogram_quantile()`, through `prometheus-api-client`

What is read where (names of `mlserver_ipa.router` and `mlserver_ipa.metrics`):

    load               router  ipa_router_arrivals_total{pipeline} (counted on arrival, not on answer)
    answered, errors   router  ipa_router_requests_total{pipeline,code}
    p99 end to end     router  ipa_router_request_duration_seconds_bucket{pipeline}
    stage arrivals     router  ipa_router_stage_requests_total{pipeline,stage,variant,code}
    stage p99          router  ipa_router_stage_duration_seconds_bucket{pipeline,stage}
    drops, misses      replica ipa_requests_dropped_total{model,reason}, ipa_deadline_misses_total{model}
    CPU used           replica process_cpu_seconds_total
    arrival budget     router  ipa_router_arrival_budget_ms{pipeline,quantile="0.01"} (a gauge over the router's
                               window: the loop turns it into cl_max = SLO - budget)

When the load cannot be read (the router's metrics are unreachable, Prometheus is down) the observation is
*unavailable* and carries the reason: the loop then keeps the configuration in force and records why. A replica
that cannot be scraped (it is starting, or was just replaced) only leaves a note. Sources never raise for the
outside world failing; they never read the wall clock for a decision (`now` is passed in).

A scrape's counters are dated when its answer came, not when it was asked for: `now` is taken before the scrape,
and an endpoint slow to answer (a router busy under a burst) counts arrivals up to the moment it wrote its
answer. `DirectSource` dates each scrape `now` + the time it took (measured on its `clock`), so a counter value
and its time agree and a slow scrape's arrivals are not given to a window that ends before them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapter.control.observation import Observation, StageObservation

__all__ = ["DirectSource", "MetricsSource", "Observation", "StageObservation", "histogram_quantile", "increase",
           "parse_samples", "per_second_rates"]

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
"""One scrape: (sample name, sorted label pairs) -> value."""

QUANTILE = 0.99


class MetricsSource(Protocol):
    """Where observations come from. `sample(now)` is called about every second between observations (a
    source that keeps its own time series, like Prometheus, ignores it); `observe(now)` covers the time since
    the previous `observe` (or since the source was made)."""

    async def sample(self, now: float) -> None: ...

    async def observe(self, now: float) -> Observation: ...

    async def aclose(self) -> None: ...


# -- reading the text format ---------------------------------------------------------------------------------


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition (`_created` gauges left out)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _matches(labels: Labels, match: Mapping[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


def total(samples: Samples, name: str, where: Callable[[dict[str, str]], bool] | None = None,
          **match: str) -> float:
    """The sum of the samples called `name` whose labels match (and pass `where`)."""
    return sum(v for (n, labels), v in samples.items()
               if n == name and _matches(labels, match) and (where is None or where(dict(labels))))


def by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """The samples called `name` summed per value of `label`."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name and _matches(labels, match):
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def buckets(samples: Samples, histogram: str, **match: str) -> list[tuple[float, float]]:
    """The cumulative buckets `(le, count)` of a histogram, summed over the matching series, by `le`."""
    per_le = by_label(samples, f"{histogram}_bucket", "le", **match)
    return sorted((float(le), count) for le, count in per_le.items())


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside its bucket as Prometheus'
    `histogram_quantile` does; None when the histogram is empty. A quantile in the +Inf bucket is the largest
    finite bound (the histogram cannot say more)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def increase(now: Samples, before: Samples | None) -> Samples:
    """Counter and histogram increases between two scrapes of one endpoint. A series new since `before`
    counts from zero (the endpoint started within the window); a series that went down was reset (the
    process restarted) and counts from zero too."""
    out: Samples = {}
    for key, value in now.items():
        name = key[0]
        if not name.endswith(("_total", "_bucket", "_count", "_sum")):
            continue
        prev = before.get(key, 0.0) if before is not None else 0.0
        out[key] = value - prev if value >= prev else value
    return out


# -- scraping endpoints directly ----------------------------------------------------------------------------


@dataclass
class _Scrape:
    at: float
    samples: Samples


@dataclass
class DirectSource:
    """Scrapes the router's and the replicas' `/metrics` (see module doc).

    `replicas()` gives, per stage, the metrics URLs of its replicas now (`LocalCluster.metrics_urls`); the
    set may change between observations. Counters start from zero at `started_at` (when the router started).
    A scrape is dated `now` + the time it took, measured on `clock` (see module doc).
    """

    pipeline: str
    router_metrics_url: str
    replicas: Callable[[], Mapping[str, Sequence[str]]]
    started_at: float
    timeout_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    """Measures how long a scrape took (only differences are read, so `now` may be on any clock)."""
    _router: _Scrape | None = field(default=None, init=False)
    _replica_scrapes: dict[str, _Scrape] = field(default_factory=dict, init=False)
    _samples: list[tuple[float, float]] = field(default_factory=list, init=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    async def _scrape(self, url: str, now: float) -> _Scrape:
        """`url`'s samples, dated when the answer came: `now` (taken before asking) + the time it took."""
        asked = self.clock()
        resp = await self._http().get(url)
        at = now + max(0.0, self.clock() - asked)
        resp.raise_for_status()
        return _Scrape(at, parse_samples(resp.text))

    def _arrivals(self, samples: Samples) -> float:
        return total(samples, "ipa_router_arrivals_total", pipeline=self.pipeline)

    async def sample(self, now: float) -> None:
        """Read the router's arrival counter, for the per-second load between observations."""
        try:
            scrape = await self._scrape(self.router_metrics_url, now)
        except (httpx.HTTPError, ValueError):
            return  # the observation will say why
        self._samples.append((scrape.at, self._arrivals(scrape.samples)))

    async def observe(self, now: float) -> Observation:
        last_at = self._router.at if self._router is not None else self.started_at
        try:
            scrape = await self._scrape(self.router_metrics_url, now)
        except (httpx.HTTPError, ValueError) as e:
            self._samples.clear()
            return Observation.unavailable(now, max(0.0, now - last_at), f"router metrics unreachable ({self.router_metrics_url}):"
                                                        f" {type(e).__name__}: {e}".rstrip(": "))
        router_now, window = scrape.samples, max(0.0, scrape.at - last_at)
        before = self._router.samples if self._router is not None else None
        d = increase(router_now, before)
        requests = self._arrivals(d)
        errors = total(d, "ipa_router_requests_total", lambda lb: lb.get("code") != "200", pipeline=self.pipeline)
        p99 = histogram_quantile(QUANTILE, buckets(d, "ipa_router_request_duration_seconds", pipeline=self.pipeline))
        stage_calls = by_label(d, "ipa_router_stage_requests_total", "stage", pipeline=self.pipeline)
        budget = [v for (n, labels), v in router_now.items() if n == "ipa_router_arrival_budget_ms"
                  and _matches(labels, {"pipeline": self.pipeline, "quantile": "0.01"})]

        points = [(last_at, self._arrivals(before) if before is not None else 0.0),
                  *[(t, c) for t, c in self._samples if last_at < t < scrape.at],
                  (scrape.at, self._arrivals(router_now))]
        self._samples.clear()
        self._router = scrape

        urls = self.replicas()
        replica_deltas, notes = await self._scrape_replicas(now, urls)
        stages = []
        for stage, stage_urls in urls.items():
            cpu: float | None = None
            dropped = misses = 0.0
            for url in stage_urls:
                got = replica_deltas.get(url)
                if got is None:
                    continue
                dr, seconds = got
                dropped += total(dr, "ipa_requests_dropped_total")
                misses += total(dr, "ipa_deadline_misses_total")
                if seconds > 0:
                    cpu = (cpu or 0.0) + total(dr, "process_cpu_seconds_total") / seconds
            stage_p99 = histogram_quantile(QUANTILE, buckets(d, "ipa_router_stage_duration_seconds",
                                                            pipeline=self.pipeline, stage=stage))
            stages.append(StageObservation(
                name=stage, arrival_rps=stage_calls.get(stage, 0.0) / window if window > 0 else 0.0,
                p99_ms=None if stage_p99 is None else stage_p99 * 1000.0, cpu_cores=cpu,
                dropped=round(dropped), deadline_misses=round(misses)))
        return Observation(
            at=now, window_s=window, load_rps=requests / window if window > 0 else 0.0,
            rates=per_second_rates(points), p99_ms=None if p99 is None else p99 * 1000.0,
            requests=round(requests), errors=round(errors), dropped=sum(s.dropped for s in stages),
            deadline_misses=sum(s.deadline_misses for s in stages), stages=tuple(stages), notes=tuple(notes),
            arrival_budget_ms=min(budget) if budget else None)

    async def _scrape_replicas(
        self, now: float, urls: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, tuple[Samples, float]], list[str]]:
        """Per replica URL: (increases since its previous scrape, seconds between them; 0 for a first scrape,
        whose CPU since process start is mostly loading the model and tells nothing about the load)."""
        wanted = [u for us in urls.values() for u in us]
        results = await asyncio.gather(*(self._scrape(u, now) for u in wanted), return_exceptions=True)
        out: dict[str, tuple[Samples, float]] = {}
        notes: list[str] = []
        for url, got in zip(wanted, results, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, httpx.HTTPError | ValueError):
                    raise got
                notes.append(f"replica metrics unreachable ({url}): {type(got).__name__}")
                continue
            prev = self._replica_scrapes.get(url)
            d = increase(got.samples, prev.samples if prev is not None else None)
            if prev is None:  # count its requests (all within the window) but not its start-up CPU
                d = {k: v for k, v in d.items() if k[0] != "process_cpu_seconds_total"}
            out[url] = (d, got.at - prev.at if prev is not None else 0.0)
            self._replica_scrapes[url] = got
        for url in set(self._replica_scrapes) - set(wanted):
            del self._replica_scrapes[url]  # gone replicas
        return out, notes

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


WHOLE_SECONDS_S = 0.05
"""A segment within this of a whole number of seconds is counted over those whole seconds (`per_second_rates`)."""


def per_second_rates(points: Iterable[tuple[float, float]], min_segment_s: float = 0.5) -> tuple[float, ...]:
    """Rates between (time, cumulative count) points, one value per whole second covered: a gap of n seconds
    between two points gives n equal values (at least one). A gap shorter than `min_segment_s` (a decision
    forced just after a sample) is too short to be a rate of its own and is counted with its neighbour.

    A gap within `WHOLE_SECONDS_S` of n whole seconds is divided by n, not by its length: the adapter samples on
    whole seconds from its decision (`AdapterService.run`), and the milliseconds a scrape took are not load.
    Divided by them, every live rate came out a hair under the count of its second (22.99 for 23 arrivals), and
    the policy's choice can turn on that hair (ResNet-50 on half a core at 22.99 rps, ResNet-152 on one at 23)."""
    pts = list(points)
    if len(pts) < 2:
        return ()
    segments: list[tuple[tuple[float, float], tuple[float, float]]] = []
    start = pts[0]
    for p in pts[1:]:
        if p[0] - start[0] >= min_segment_s:
            segments.append((start, p))
            start = p
    if start != pts[-1]:  # a short tail: into the last segment (or the only one)
        segments = [*segments[:-1], (segments[-1][0], pts[-1])] if segments else [(pts[0], pts[-1])]
    out: list[float] = []
    for (t0, c0), (t1, c1) in segments:
        dt = t1 - t0
        if dt > 0:
            whole = max(1, round(dt))
            over = whole if abs(dt - whole) <= WHOLE_SECONDS_S else dt
            out += [max(0.0, c1 - c0) / over] * whole
    return tuple(out)
