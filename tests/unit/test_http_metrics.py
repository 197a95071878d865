"""The HTTP metrics: counted in plain integers, exposed as Prometheus text when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from adapters.http.middleware import HttpMetrics, header_value


def scrape(metrics: HttpMetrics) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    return {
        name: float(value)
        for name, _, value in (
            line.rpartition(" ") for line in generate_latest(registry).decode().splitlines()
        )
        if name and not name.startswith("#")
    }


def test_answers_are_counted_by_method_route_and_status() -> None:
    m = HttpMetrics()
    for _ in range(3):
        m.count("GET", "/api/live/quota", 200, 0.001)
    m.count("GET", "/api/live/quota", 401, 0.001)
    m.count("POST", "/api/live/session/start", 201, 0.02)
    got = scrape(m)
    quota = 'xentree_http_requests_total{method="GET",route="/api/live/quota",status="%s"}'
    assert got[quota % 200] == 3
    assert got[quota % 401] == 1
    assert got[
        'xentree_http_requests_total{method="POST",route="/api/live/session/start",status="201"}'
    ] == 1


def test_latency_buckets_are_cumulative_and_inclusive_of_their_bound() -> None:
    m = HttpMetrics()
    for seconds in (0.001, 0.002, 0.003, 0.3, 9.0):
        m.count("GET", "/r", 200, seconds)
    got = scrape(m)

    def bucket(le: str) -> float:
        return got[f'xentree_http_request_seconds_bucket{{le="{le}",method="GET",route="/r"}}']

    assert bucket("0.002") == 2  # 0.002 itself falls in le="0.002"
    assert bucket("0.005") == 3
    assert bucket("0.25") == 3
    assert bucket("0.5") == 4
    assert bucket("5.0") == 4
    assert bucket("+Inf") == 5
    assert got['xentree_http_request_seconds_count{method="GET",route="/r"}'] == 5
    assert abs(got['xentree_http_request_seconds_sum{method="GET",route="/r"}'] - 9.306) < 1e-9


def test_methods_outside_the_standard_ones_share_one_label() -> None:
    """A client inventing methods cannot grow the metrics without bound."""
    m = HttpMetrics()
    for i in range(50):
        m.count(f"BREW{i}", "unmatched", 405, 0.001)
    got = scrape(m)
    answers = [k for k in got if k.startswith("xentree_http_requests_total{")]
    assert answers == ['xentree_http_requests_total{method="other",route="unmatched",status="405"}']
    assert got[answers[0]] == 50


def test_header_value_is_the_first_of_its_name_or_none() -> None:
    scope = {"headers": [(b"x-a", b"1"), (b"authorization", b"Bearer t\xe9"), (b"x-a", b"2")]}
    assert header_value(scope, b"x-a") == "1"  # type: ignore[arg-type]
    assert header_value(scope, b"authorization") == "Bearer t\u00e9"  # type: ignore[arg-type]
    assert header_value(scope, b"x-missing") is None  # type: ignore[arg-type]
