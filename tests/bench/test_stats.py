"""The bench's arithmetic: tool-output parsing, medians, ratios, floors and the table."""

from __future__ import annotations

import json

import pytest

from shoal.bench import stats

TCP_JSON = json.dumps({"end": {"sum_sent": {"bits_per_second": 9e8}, "sum_received": {"bits_per_second": 8.5e8}}})
UDP_JSON = json.dumps({"end": {"sum": {"seconds": 2.0, "packets": 300000, "lost_packets": 100000}}})
PING = """PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.
64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.500 ms
64 bytes from 100.64.0.2: icmp_seq=2 ttl=64 time=0.300 ms
64 bytes from 100.64.0.2: icmp_seq=4 ttl=64 time=2.20 ms

--- 100.64.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 31ms
rtt min/avg/max/mdev = 0.300/1.000/2.200/0.853 ms
"""


def test_iperf_parsing() -> None:
    assert stats.iperf_tcp_mbps(TCP_JSON) == pytest.approx(850.0)
    assert stats.iperf_udp_pps(UDP_JSON) == pytest.approx(100000.0)
    with pytest.raises(stats.ParseError):
        stats.iperf_tcp_mbps('{"error": "unable to connect"}')
    with pytest.raises(stats.ParseError):
        stats.iperf_udp_pps("not json")


def test_ping_parsing() -> None:
    s = stats.ping_summary(PING, sent=4)
    assert s["ping_avg_ms"] == pytest.approx(1.0)
    assert s["ping_p99_ms"] == pytest.approx(2.2)
    assert s["ping_loss"] == pytest.approx(0.25)
    with pytest.raises(stats.ParseError):
        stats.ping_summary("100% packet loss", sent=4)
    assert stats.percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_proc_parsing() -> None:
    stat = "1234 (python3 (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 100 0 0"
    assert stats.proc_cpu_ticks(stat) == 175
    assert stats.proc_hwm_mb("Name:\tx\nVmHWM:\t   51200 kB\nVmRSS:\t 100 kB\n") == 50.0


def test_medians_ratios_verdicts() -> None:
    base = stats.medians([{"tcp1_mbps": 500, "udp64_pps": 40000, "ping_avg_ms": 0.5},
                          {"tcp1_mbps": 520, "udp64_pps": 42000, "ping_avg_ms": 0.6},
                          {"tcp1_mbps": 100, "udp64_pps": 41000, "ping_avg_ms": 0.55}])
    assert base == {"tcp1_mbps": 500, "udp64_pps": 41000, "ping_avg_ms": 0.55}
    shoal = stats.medians([{"tcp1_mbps": 650, "udp64_pps": 50000, "ping_avg_ms": 0.6, "rss_mb": 70},
                           {"tcp1_mbps": 590, "udp64_pps": 70000, "ping_avg_ms": 0.62, "rss_mb": 90}])
    r = stats.ratios(shoal, base)
    assert r["tcp1_mbps"] == pytest.approx(1.24) and "rss_mb" not in r
    v = {x["metric"]: x["pass"] for x in stats.verdicts(shoal, r)}
    # 1.24x >= 1.2x; 60000/41000 = 1.46x < 1.5x; 0.61/0.55 = 1.11x <= 1.2x; RSS median 80 <= 80
    assert v == {"tcp1_mbps": True, "udp64_pps": False, "ping_avg_ms": True, "rss_mb": True}
    table = stats.markdown_table(shoal, base, stats.verdicts(shoal, r))
    assert "| TCP, 1 stream | Mbit/s | 500.0 | 620.0 | 1.24x | >= 1.2x wireguard-go: PASS |" in table
    assert "FAIL" in table


def test_missing_metric_fails_its_floor() -> None:
    v = stats.verdicts({}, {})
    assert len(v) == len(stats.FLOORS) and not any(x["pass"] for x in v)
