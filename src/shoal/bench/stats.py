"""Pure benchmark arithmetic: parse tool output, medians across rounds, ratios to the
baseline, pass/fail against the floors of issue #3, and the Markdown table.

Inputs parsed here:
- iperf3 ``-J`` (3.12) client output. TCP: ``end.sum_received.bits_per_second``. UDP:
  ``end.sum`` has ``packets`` (sent), ``lost_packets`` and ``seconds`` as reported by the
  server; received packets/s = (packets - lost_packets) / seconds.
- ``ping`` (iputils) output: one ``time=0.123 ms`` per reply; a missing reply is lost.
- /proc/<pid>/stat fields 14-15 (utime, stime, clock ticks) and /proc/<pid>/status VmHWM
  (peak resident set, kB).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass

# metric -> (label, unit, higher_is_better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "tcp1_mbps": ("TCP, 1 stream", "Mbit/s", True),
    "tcp4_mbps": ("TCP, 4 streams", "Mbit/s", True),
    "udp64_pps": ("UDP 64-byte packets received", "packets/s", True),
    "ping_avg_ms": ("ping RTT avg", "ms", False),
    "ping_p99_ms": ("ping RTT p99", "ms", False),
    "cpu_s": ("tunnel CPU, both ends, whole round", "s", False),
    "rss_mb": ("tunnel max RSS (larger end)", "MB", False),
}


@dataclass(frozen=True)
class Floor:
    """A target of issue #3: ``ratio`` (shoal/wireguard-go) must be >= min or <= max, or the
    absolute Shoal value must be <= ``absolute_max``."""

    metric: str
    min_ratio: float | None = None
    max_ratio: float | None = None
    absolute_max: float | None = None

    def describe(self) -> str:
        if self.min_ratio is not None:
            return f">= {self.min_ratio:g}x wireguard-go"
        if self.max_ratio is not None:
            return f"<= {self.max_ratio:g}x wireguard-go"
        return f"<= {self.absolute_max:g} {METRICS[self.metric][1]}"


FLOORS: tuple[Floor, ...] = (
    Floor("tcp1_mbps", min_ratio=1.2),
    Floor("udp64_pps", min_ratio=1.5),
    Floor("ping_avg_ms", max_ratio=1.2),
    Floor("rss_mb", absolute_max=80.0),
)


class ParseError(ValueError):
    """Tool output did not have the expected shape."""


def iperf_tcp_mbps(text: str) -> float:
    try:
        data = json.loads(text)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError, TypeError) as e:
        raise ParseError(f"iperf3 TCP JSON: {e}") from None


def iperf_udp_pps(text: str) -> float:
    try:
        data = json.loads(text)
        s = data["end"]["sum"]
        seconds = float(s["seconds"])
        received = int(s["packets"]) - int(s["lost_packets"])
    except (ValueError, KeyError, TypeError) as e:
        raise ParseError(f"iperf3 UDP JSON: {e}") from None
    if seconds <= 0:
        raise ParseError("iperf3 UDP JSON: zero duration")
    return max(received, 0) / seconds


_PING_TIME = re.compile(r"time[=<]([0-9.]+) ms")


def ping_rtts(text: str) -> list[float]:
    return [float(m) for m in _PING_TIME.findall(text)]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def ping_summary(text: str, sent: int) -> dict[str, float]:
    rtts = ping_rtts(text)
    if not rtts:
        raise ParseError("ping: no replies")
    return {
        "ping_avg_ms": statistics.fmean(rtts),
        "ping_p99_ms": percentile(rtts, 99),
        "ping_loss": 1 - len(rtts) / sent if sent else 0.0,
    }


def proc_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat."""
    rest = stat_text[stat_text.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return int(rest[11]) + int(rest[12])  # fields 14 and 15


def proc_hwm_mb(status_text: str) -> float:
    m = re.search(r"^VmHWM:\s+(\d+) kB", status_text, re.M)
    if not m:
        raise ParseError("no VmHWM in /proc status")
    return int(m.group(1)) / 1024


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric median over the rounds that have the metric."""
    keys = sorted({k for r in rounds for k in r})
    out: dict[str, float] = {}
    for k in keys:
        vals = [r[k] for r in rounds if k in r and r[k] is not None and not math.isnan(r[k])]
        if vals:
            out[k] = statistics.median(vals)
    return out


def ratios(shoal: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    return {k: shoal[k] / base[k] for k in shoal if k in base and base[k]}


def verdicts(shoal: dict[str, float], ratio: dict[str, float]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in FLOORS:
        if f.absolute_max is not None:
            value = shoal.get(f.metric)
            ok = value is not None and value <= f.absolute_max
        else:
            value = ratio.get(f.metric)
            ok = value is not None and (
                (f.min_ratio is not None and value >= f.min_ratio)
                or (f.max_ratio is not None and value <= f.max_ratio)
            )
        out.append({"metric": f.metric, "target": f.describe(), "value": value, "pass": bool(ok)})
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def markdown_table(shoal: dict[str, float], base: dict[str, float], verdict: list[dict[str, object]]) -> str:
    ratio = ratios(shoal, base)
    targets = {str(v["metric"]): v for v in verdict}
    lines = [
        "| metric | unit | wireguard-go | Shoal | Shoal / wireguard-go | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for key, (label, unit, _hib) in METRICS.items():
        if key not in shoal and key not in base:
            continue
        t = targets.get(key)
        target = f"{t['target']}: {'PASS' if t['pass'] else 'FAIL'}" if t else ""
        r = ratio.get(key)
        lines.append(
            f"| {label} | {unit} | {_fmt(base.get(key))} | {_fmt(shoal.get(key))} | "
            f"{'-' if r is None else f'{r:.2f}x'} | {target} |"
        )
    return "\n".join(lines)


__all__ = [
    "METRICS",
    "FLOORS",
    "Floor",
    "ParseError",
    "iperf_tcp_mbps",
    "iperf_udp_pps",
    "ping_rtts",
    "ping_summary",
    "percentile",
    "proc_cpu_ticks",
    "proc_hwm_mb",
    "medians",
    "ratios",
    "verdicts",
    "markdown_table",
]
