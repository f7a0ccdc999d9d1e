"""The monitor's Prometheus source: the same `Observation` as `DirectSource`, asked of a Prometheus server.

Used when the adapter is given a Prometheus URL (`ipa up --prometheus URL`, or on Kubernetes). The server
scrapes the router and the replicas (for the local cluster: `file_sd_configs` on its
`prometheus-targets.json`, whose targets carry the labels `pipeline`, `stage` and `replica`); this source
asks it, at the end of every window of W seconds:

    load        sum(increase(ipa_router_arrivals_total{pipeline="P"}[Ws])) / W   (counted on arrival)
    per second  sum(irate(ipa_router_arrivals_total{pipeline="P"}[Ks])), a range query, step 1 s
    p99         histogram_quantile(0.99, sum by (le) (rate(ipa_router_request_duration_seconds_bucket[Ws])))
    per stage   the same by `stage`; drops, misses and process CPU by the replicas' `stage` label

Windows shorter than `min_window_s` are widened to it (`rate()` needs two samples in its window). The queries
are evaluated at the server's present (`wallclock`, unix time, only for the range query's bounds): Prometheus
keeps its own time series, so `sample()` does nothing. The label that names the pipeline is `pipeline` for
the local cluster's targets; on Kubernetes the scrape config names it `graph` (`pipeline_label`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from adapter.control.monitor import Observation, StageObservation


@dataclass(frozen=True)
class PrometheusSettings:
    """Where the Prometheus server is and how it labels the pipeline's targets."""

    url: str
    """base URL of the server, e.g. http://127.0.0.1:9090"""
    pipeline_label: str = "pipeline"
    """the target label whose value is the pipeline's name (`graph` with the Kubernetes scrape config)"""
    min_window_s: float = 5.0
    """shortest window asked for: at least two scrapes must fall in it (a 1 s scrape interval: 2 s)"""
    irate_window_s: float = 5.0
    """range of `irate()` for the per-second rates: it uses the last two scrapes inside it"""
    timeout_s: float = 5.0


def _value(result: list[dict[str, Any]]) -> float | None:
    """The single value of an instant query; None when empty or NaN (no data)."""
    if not result:
        return None
    v = float(result[0]["value"][1])
    return None if math.isnan(v) else v


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in result:
        v = float(row["value"][1])
        if not math.isnan(v):
            out[row["metric"].get(label, "")] = v
    return out


@dataclass
class PrometheusSource:
    """Observations from a Prometheus server (see module doc)."""

    pipeline: str
    stages: Sequence[str]
    settings: PrometheusSettings
    started_at: float
    wallclock: Callable[[], float] = time.time
    _last_at: float | None = field(default=None, init=False)
    _prom: PrometheusConnect | None = field(default=None, init=False)

    def _connect(self) -> PrometheusConnect:
        if self._prom is None:
            # One quick retry: the loop asks again next interval anyway, and must not stall on a dead server.
            self._prom = PrometheusConnect(url=self.settings.url, disable_ssl=True,
                                           retry=Retry(total=1, backoff_factor=0.1),
                                           timeout=self.settings.timeout_s)  # type: ignore[arg-type]
        return self._prom

    async def sample(self, now: float) -> None:
        return None

    async def observe(self, now: float) -> Observation:
        window = max(0.0, now - (self._last_at if self._last_at is not None else self.started_at))
        self._last_at = now
        try:
            return await asyncio.to_thread(self._observe, now, window)
        except (requests.RequestException, PrometheusApiClientException, ValueError, KeyError) as e:
            return Observation.unavailable(now, window, f"Prometheus at {self.settings.url} could not be asked: "
                                                        f"{type(e).__name__}: {str(e)[:200]}")

    def _observe(self, now: float, window: float) -> Observation:
        prom = self._connect()
        sel = f'{self.settings.pipeline_label}="{self.pipeline}"'
        w = max(window, self.settings.min_window_s)
        rng = f"[{math.ceil(w)}s]"

        def q(query: str) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = prom.custom_query(query)
            return result

        router_up = _value(q(f'max(up{{{sel},replica="router"}})'))
        if router_up is None:
            return Observation.unavailable(now, window, f"Prometheus at {self.settings.url} has no router target "
                                                        f"for {sel} (is it scraping the pipeline?)")
        if router_up < 1:
            return Observation.unavailable(now, window, f"Prometheus at {self.settings.url} cannot scrape the "
                                                        f"router of {sel} (up == 0)")
        requests_in = _value(q(f"sum(increase(ipa_router_arrivals_total{{{sel}}}{rng}))")) or 0.0
        errors = _value(q(f'sum(increase(ipa_router_requests_total{{{sel},code!="200"}}{rng}))')) or 0.0
        p99 = _value(q(f"histogram_quantile(0.99, sum by (le) "
                       f"(rate(ipa_router_request_duration_seconds_bucket{{{sel}}}{rng})))"))
        calls = _by(q(f"sum by (stage) (increase(ipa_router_stage_requests_total{{{sel}}}{rng}))"), "stage")
        stage_p99 = _by(q(f"histogram_quantile(0.99, sum by (stage, le) "
                          f"(rate(ipa_router_stage_duration_seconds_bucket{{{sel}}}{rng})))"), "stage")
        replica_sel = f'{sel},replica!="router"'
        cpu = _by(q(f"sum by (stage) (rate(process_cpu_seconds_total{{{replica_sel}}}{rng}))"), "stage")
        drops = _by(q(f"sum by (stage) (increase(ipa_requests_dropped_total{{{replica_sel}}}{rng}))"), "stage")
        misses = _by(q(f"sum by (stage) (increase(ipa_deadline_misses_total{{{replica_sel}}}{rng}))"), "stage")
        rates = self._rates(prom, sel, window)
        budget = _value(q(f'min(min_over_time(ipa_router_arrival_budget_ms{{{sel},quantile="0.01"}}{rng}))'))

        stages = tuple(StageObservation(
            name=s, arrival_rps=calls.get(s, 0.0) / w, p99_ms=None if s not in stage_p99 else stage_p99[s] * 1000,
            cpu_cores=cpu.get(s), dropped=round(drops.get(s, 0.0)), deadline_misses=round(misses.get(s, 0.0)))
            for s in self.stages)
        return Observation(
            at=now, window_s=window, load_rps=requests_in / w, rates=rates,
            p99_ms=None if p99 is None else p99 * 1000.0, requests=round(requests_in), errors=round(errors),
            dropped=sum(s.dropped for s in stages), deadline_misses=sum(s.deadline_misses for s in stages),
            stages=stages, arrival_budget_ms=budget)

    def _rates(self, prom: PrometheusConnect, sel: str, window: float) -> tuple[float, ...]:
        """Per-second arrival rates over the window (empty when the server has no points for it)."""
        seconds = max(1, round(window))
        end = self.wallclock()
        start = end - seconds + 1
        query = f"sum(irate(ipa_router_arrivals_total{{{sel}}}[{math.ceil(self.settings.irate_window_s)}s]))"
        result = prom.custom_query_range(query, start_time=datetime.fromtimestamp(start, UTC),
                                         end_time=datetime.fromtimestamp(end, UTC), step="1")
        if not result:
            return ()
        values = [float(v) for _, v in result[0]["values"]]
        return tuple(0.0 if math.isnan(v) else v for v in values)

    async def aclose(self) -> None:
        if self._prom is not None:
            self._prom.close()
            self._prom = None
