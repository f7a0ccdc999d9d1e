"""Request limits at a real replica (`python -m mlserver_ipa.server`) and the real router: the attacks that
worked before (a gzip bomb, huge bodies, slow headers and bodies, idle connections, huge headers and request
ids) each get their status in the V2 error shape, the process's memory stays bounded, and a good request is
served right after."""

from __future__ import annotations

import functools
import gzip
import json
import socket
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, MLServer

from mlserver_ipa.limits import RequestLimits, inflate

MODEL = "resnet"
R = SMALL_RESOLUTION
LIMITS = {"max_body_bytes": 2 << 20, "max_inflated_bytes": 4 << 20, "header_timeout_s": 1.0,
          "body_timeout_s": 1.0, "idle_timeout_s": 2.0, "max_header_bytes": 8192, "max_headers": 40}


def good_body() -> bytes:
    x = np.zeros((1, 3, R, R), np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request: pytest.FixtureRequest, start_mlserver, variant_repo) -> MLServer:
    """A replica with LIMITS on each HTTP parser (`$IPA_HTTP_PARSER`, read by the replica when it starts)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IPA_HTTP_PARSER", request.param)
        return start_mlserver(variant_repo, ipa_limits=LIMITS)


def infer(server: MLServer, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{MODEL}/infer", content=content,
                      headers={"content-type": "application/json", **headers}, timeout=30)


def assert_serves(server: MLServer) -> None:
    response = infer(server, good_body())
    assert response.status_code == 200, response.text[:300]


def assert_v2_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert set(response.json()) == {"error"} and text in response.json()["error"], response.text[:300]


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of spaces in about 1 MB (made once: compressing it takes seconds)."""
    return gzip.compress(b" " * (1 << 30), compresslevel=9)


def test_a_gzip_bomb_is_refused_without_inflating_it(server: MLServer) -> None:
    bomb = gzip_bomb()
    before = rss_mb(server.process.pid)
    response = infer(server, bomb, **{"content-encoding": "gzip"})
    assert_v2_error(response, 413, "max_inflated_bytes")
    assert rss_mb(server.process.pid) - before < 100  # it took 3.5 GB before
    assert_serves(server)


def test_a_compressed_good_request_is_served(server: MLServer) -> None:
    for encoding, data in (("gzip", gzip.compress(good_body())), ("deflate", zlib.compress(good_body()))):
        response = infer(server, data, **{"content-encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)
    assert_v2_error(infer(server, b"\x1f\x8bnot gzip", **{"content-encoding": "gzip"}), 400, "inflate")
    assert_v2_error(infer(server, good_body(), **{"content-encoding": "br"}), 400, "content-encoding")


def test_bodies_over_the_limit_are_413(server: MLServer) -> None:
    big = b"[" + b"0," * (3 << 20) + b"0]"
    assert_v2_error(infer(server, big), 413, "max_body_bytes")  # by its content-length

    def chunks():  # no content-length: counted while it arrives
        for _ in range(40):
            yield b" " * (100 << 10)

    response = httpx.post(f"{server.http_url}/v2/models/{MODEL}/infer", content=chunks(), timeout=30)
    assert_v2_error(response, 413, "max_body_bytes")
    assert_serves(server)


def test_headers_over_the_limits_are_400(server: MLServer) -> None:
    assert_v2_error(infer(server, good_body(), **{"x-request-id": "r" * 1000}), 400, "x-request-id")
    many = {f"x-h{i}": "1" for i in range(60)}
    assert_v2_error(infer(server, good_body(), **many), 400, "max_headers")
    huge = infer(server, good_body(), **{"x-filler": "f" * 20_000})
    assert_v2_error(huge, 400, "bytes")
    assert_serves(server)


def _connect(server: MLServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_what_is_not_http_is_answered_400_in_the_v2_shape(server: MLServer) -> None:
    sock = _connect(server)
    sock.sendall(b"\x16\x03\x01 not HTTP at all\r\n\r\n")  # e.g. a TLS hello to the plain port
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]).keys() == {"error"}
    assert_serves(server)


def test_each_parser_gets_the_same_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlserver_ipa import protocol

    limits = RequestLimits(max_header_bytes=4096)
    for parser, base in (("h11", "H11Protocol"), ("httptools", "HttpToolsProtocol")):
        cls = protocol.guarded_protocol(limits, parser=parser)  # type: ignore[arg-type]
        assert base in {c.__name__ for c in cls.__mro__} and cls.limits is limits
        monkeypatch.setenv("IPA_HTTP_PARSER", parser)
        assert protocol.default_parser() == parser
    options = protocol.uvicorn_options(limits)
    assert options["h11_max_incomplete_event_size"] == 4096


def test_slow_headers_are_answered_408_and_closed(server: MLServer) -> None:
    sock = _connect(server)
    sock.sendall(b"POST /v2/models/resnet/infer HTTP/1.1\r\nhost: x\r\n")  # and then nothing (slowloris)
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error"' in answer and b"header_timeout_s" in answer
    assert_serves(server)


def test_a_slow_body_is_answered_408(server: MLServer) -> None:
    sock = _connect(server)
    sock.sendall(b"POST /v2/models/resnet/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 1000\r\n\r\n{\"inputs\"")
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout_s" in answer
    assert_serves(server)


def test_an_idle_connection_is_closed(server: MLServer) -> None:
    sock = _connect(server)
    sock.settimeout(120)  # a hang guard only: the server's idle timeout is 2 s
    # recv returning b"" is the server's close (EOF); a TimeoutError here would fail the test, so the close cannot
    # be the socket's own timeout mistaken for it.
    assert sock.recv(65536) == b""  # closed by the server, having said nothing
    assert_serves(server)


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on `port` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
                address = ipaddress.ip_address(raw)
                found.add(str(getattr(address, "ipv4_mapped", None) or address))
    return found


def test_the_replica_listens_on_loopback_only(start_mlserver, variant_repo) -> None:
    server = start_mlserver(variant_repo, host=None)  # settings.json without a host: loopback, not 0.0.0.0
    assert listening_addresses(server.http_port) == {"127.0.0.1"}
    grpc = listening_addresses(server.grpc_port)
    assert grpc and grpc <= {"127.0.0.1", "::1"}, grpc


def test_inflate_refuses_past_the_limit_in_bounded_steps() -> None:
    data = zlib.compress(b"a" * (10 << 20))
    with pytest.raises(Exception, match="inflates past"):
        inflate(data, "deflate", 1 << 20)
    assert inflate(data, "deflate", 11 << 20) == b"a" * (10 << 20)
    with pytest.raises(Exception, match="truncated"):
        inflate(zlib.compress(b"abc" * 1000)[:-6], "deflate", 1 << 20)


def test_limits_come_from_the_environment_and_name_a_bad_field() -> None:
    assert RequestLimits.from_env({"IPA_LIMIT_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096
    with pytest.raises(ValueError, match="body_timeout_s"):
        RequestLimits.from_env({"IPA_LIMIT_BODY_TIMEOUT_S": "inf"})
