"""Per-request budgets: fixed SLOs and Sponge's dynamic SLOs from the measured 4G bandwidth log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA

from adapter.errors import UsageError
from adapter.workloads.slo import DynamicSLO, FixedSLO, read_bandwidth_log

BUS_LOG = SHARED_DATA / "bandwidth" / "report_bus_0001.log"
needs_log = pytest.mark.skipif(not BUS_LOG.is_file(), reason="shared bandwidth log not present")


@needs_log
def test_dynamic_slo_from_the_real_bus_log() -> None:
    log = read_bandwidth_log(BUS_LOG)
    assert len(log) == 607
    # first row: 3,263,799 bytes received in 725 ms
    assert log.bytes_per_ms[0] == pytest.approx(3263799 / 725)
    assert 400 < log.bytes_per_ms.min() < log.bytes_per_ms.max() < 8000
    slo = DynamicSLO(log, slo_ms=1000, request_bytes=200 * 1024)  # a 200 KB image, as in Sponge
    assert slo.network_ms(0.0) == pytest.approx(200 * 1024 / (3263799 / 725))
    assert slo.deadline_ms(0.5) == pytest.approx(1000 - 200 * 1024 / (3263799 / 725))
    times = np.arange(0, 607, 0.5)
    deadlines = slo.deadlines_ms(times)
    network = slo.network_ms_at(times)
    assert np.allclose(deadlines, np.clip(1000 - network, 0, None))
    assert 0 < deadlines.min() < deadlines.max() < 1000  # every request loses some budget, some lose a lot
    # a workload longer than the log replays it from the start
    assert slo.deadline_ms(607 + 3.2) == slo.deadline_ms(3.2)
    # cl_max: the worst network time of the window, what the optimizer must reserve
    assert slo.cl_max_ms(10, 30) == pytest.approx(float(network[(times >= 10) & (times < 40)].max()))
    assert slo.cl_max_ms(0, 607) == pytest.approx(200 * 1024 / log.bytes_per_ms.min())
    assert slo.cl_max_ms(5.5, 0.2) == pytest.approx(slo.network_ms(5.5))


@needs_log
def test_a_request_larger_than_the_slo_allows_gets_no_budget() -> None:
    slo = DynamicSLO(read_bandwidth_log(BUS_LOG), slo_ms=100, request_bytes=10_000_000)
    assert slo.deadlines_ms(np.arange(0.0, 600.0)).max() == 0.0


def test_fixed_slo_and_an_outage_second(tmp_path: Path) -> None:
    fixed = FixedSLO(250)
    assert fixed.deadline_ms(12.3) == 250 and fixed.cl_max_ms(0, 20) == 0
    assert fixed.deadlines_ms(np.zeros(3)).tolist() == [250, 250, 250]
    log = tmp_path / "bw.log"
    log.write_text("1 0 51 3 100000 1000\n2 1000 51 3 0 1000\n3 2000 51 3 50000 1000\n")
    slo = DynamicSLO(read_bandwidth_log(log), 500, 10_000)
    assert slo.deadlines_ms(np.array([0.1, 1.1, 2.1])).tolist() == [400, 0, 300]
    assert slo.cl_max_ms(0, 3) == np.inf


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty bandwidth log"),
        ("1 2 3 4 5\n", "line 1: expected 6 columns"),
        ("1 2 3 4 lots 1000\n", "line 1: bytes received and interval must be numbers"),
        ("1 2 3 4 5 6\n1 2 3 4 5 0\n", "line 2: need bytes received >= 0 and interval_ms > 0"),
    ],
)
def test_bad_bandwidth_logs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bw.log"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_bandwidth_log(path)


def test_bad_slo_values(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the bandwidth log"):
        read_bandwidth_log(tmp_path / "missing.log")
    with pytest.raises(UsageError, match="SLO must be a positive"):
        FixedSLO(0)
    path = tmp_path / "bw.log"
    path.write_text("1 0 51 3 100000 1000\n")
    with pytest.raises(UsageError, match="request size must be > 0"):
        DynamicSLO(read_bandwidth_log(path), 100, 0)
