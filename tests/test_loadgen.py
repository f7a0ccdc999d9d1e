"""The open-loop load generator against real HTTP servers on loopback: a tiny V2 server that answers slowly
(`tests/slow_v2_server.py`, run in its own process), and the `ipa load` command end to end."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from shared_data import SHARED_DATA

from adapter.cli import main as ipa
from adapter.workloads.loadgen import (
    CSV_COLUMNS,
    LoadPlan,
    V2Payload,
    make_plan,
    run_load,
    summarize,
    write_records_csv,
)
from adapter.workloads.slo import FixedSLO
from adapter.workloads.traces import Trace

SERVER = Path(__file__).with_name("slow_v2_server.py")
BUS_LOG = SHARED_DATA / "bandwidth" / "report_bus_0001.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def slow_server() -> Iterator[Callable[..., str]]:
    """`slow_server(delay=0.5, status=200)` starts the tiny V2 server and returns its URL; all end with the module."""
    started: list[subprocess.Popen[bytes]] = []

    def start(delay: float = 0.5, status: int = 200) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(port), "--delay", str(delay), "--status", str(status)],
            start_new_session=True,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/stats", timeout=1)
                return url
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the test server did not start") from None
                time.sleep(0.1)

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


PAYLOAD = V2Payload.random(8)


async def test_open_loop_keeps_the_rate_while_responses_are_slow(slow_server: Callable[..., str]) -> None:
    url = slow_server(delay=0.5)
    # 40 rps for 3 s: a request every 25 ms while each answer takes 500 ms
    plan = make_plan(Trace(np.full(3, 40.0)), arrivals="uniform", slo=FixedSLO(2000))
    records = await run_load(url, "m", plan, payload=PAYLOAD)
    summary = summarize(records, plan)
    assert summary.sent == summary.ok == 120
    # every request keeps its planned time, and its latency is measured from it (never less than the delay)
    assert [r.scheduled_s for r in records] == sorted(r.scheduled_s for r in records)
    assert all(r.sent_s >= r.scheduled_s for r in records)
    assert min(r.latency_ms for r in records) >= 500
    # open loop: sends did not wait for answers, so requests overlapped (about 40 rps x 0.5 s = 20 at once on a
    # quiet machine; a closed loop would never exceed 1). How close to the schedule the sends were is speed,
    # which benchmarks report, not tests.
    assert httpx.get(f"{url}/stats").json()["concurrent_max"] >= 5
    assert {r.variant for r in records} == {"slow"}


async def test_deadlines_priority_and_rows(slow_server: Callable[..., str], tmp_path: Path) -> None:
    url = slow_server(delay=0.3)
    times = np.array([0.0, 0.05, 0.1, 0.15])
    plan = LoadPlan(times, 0.2, deadlines_ms=np.array([100.0, 5000.0, 100.0, 5000.0]), priority=2)
    records = await run_load(url, "m", plan, payload=PAYLOAD)
    assert [r.deadline_met for r in records] == [False, True, False, True]
    summary = summarize(records, plan)
    assert summary.deadline_met_share == 0.5
    out = tmp_path / "rows.csv"
    write_records_csv(records, out)
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert rows[1]["deadline_met"] == "True" and rows[1]["status"] == "200" and rows[1]["variant"] == "slow"
    assert float(rows[0]["latency_ms"]) >= 300


async def test_errors_are_counted_by_kind(slow_server: Callable[..., str]) -> None:
    plan = make_plan(Trace(np.full(1, 10.0)), arrivals="uniform", slo=FixedSLO(1000))
    records = await run_load(slow_server(delay=0.0, status=503), "m", plan, payload=PAYLOAD)
    assert {r.reason for r in records} == {"answered 503 as asked"}  # the server's `error`, kept with the row
    unavailable = summarize(records, plan)
    assert unavailable.errors == {"http_503": 10} and unavailable.ok == 0
    assert unavailable.deadline_met_share == 0.0
    refused = summarize(await run_load(f"http://127.0.0.1:{free_port()}", "m", plan, payload=PAYLOAD), plan)
    assert refused.errors == {"connect": 10}
    assert json.dumps(refused.to_dict())  # NaN latencies become null
    timeouts = summarize(
        await run_load(slow_server(delay=5), "m", plan, payload=PAYLOAD, timeout_s=0.3), plan
    )
    assert timeouts.errors == {"timeout": 10}


def test_ipa_load_command(slow_server: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = slow_server(delay=0.2)
    out = tmp_path / "rows.csv"
    args = ["load", "--url", url, "--model", "resnet", "--trace", "synthetic:steady-high", "--length", "2",
            "--scale", "0.5", "--slo-ms", "1000", "--priority", "1", "--resolution", "16", "--out", str(out)]
    assert ipa(args) == 0
    printed = capsys.readouterr().out
    assert "sent" in printed and "achieved" in printed
    rows = list(csv.DictReader(out.open()))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["sent"] == len(rows) > 10 and summary["ok"] == len(rows)
    assert all(float(r["deadline_ms"]) == 1000 for r in rows)
    # a client's deadline runs from its send: each request carried it as `ipa-deadline`, at most the SLO ahead
    stats = httpx.get(f"{url}/stats").json()
    assert stats["deadline_headers"] == stats["received"] == len(rows)
    assert stats["lead_ms_max"] <= 1000 + 50  # wall clocks of two processes on one machine: within a few ms
    assert ipa([*args, "--relative-deadlines"]) == 0  # ... or only `deadline_ms`, counted by the server
    assert httpx.get(f"{url}/stats").json()["deadline_headers"] == len(rows)


@pytest.mark.skipif(not BUS_LOG.is_file(), reason="shared bandwidth log not present")
def test_ipa_load_with_dynamic_slos(slow_server: Callable[..., str], tmp_path: Path) -> None:
    url = slow_server(delay=0.05)
    out = tmp_path / "rows.csv"
    args = ["load", "--url", url, "--model", "m", "--trace", "synthetic:steady-low", "--length", "3",
            "--slo-ms", "800", "--bandwidth", str(BUS_LOG), "--request-bytes", "204800", "--out", str(out)]
    assert ipa(args) == 0
    deadlines = {float(r["deadline_ms"]) for r in csv.DictReader(out.open())}
    assert len(deadlines) > 1 and max(deadlines) < 800  # the network took its share, second by second


def test_ipa_load_bad_inputs_exit_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["load", "--url", "http://127.0.0.1:9", "--model", "m"]
    cases = [
        (["--trace", "nowhere.txt"], "nowhere.txt: no such trace file"),
        (["--trace", "synthetic:steady-low", "--slo-ms", "-5"], "SLO must be a positive"),
        (["--trace", "synthetic:steady-low", "--request-bytes", "10"], "--request-bytes only matters with"),
    ]
    for extra, message in cases:
        assert ipa(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("ipa load: error: ") and err.count("\n") == 1 and message in err
    refused = ["--trace", "synthetic:steady-low", "--length", "1", "--url", f"http://127.0.0.1:{free_port()}"]
    assert ipa(base + refused) == 1
    assert "no request was answered" in capsys.readouterr().err
    # the installed command: one line on stderr, exit status 2
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ipa"), *base, "--trace", "synthetic:steady-low", "--bandwidth", "x.log"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "ipa load: error: --bandwidth needs --slo-ms: the deadline is the SLO minus the network time\n"
