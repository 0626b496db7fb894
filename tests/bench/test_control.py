"""The control-plane benchmark: its BENCHMARKS.md section handling, and a small real run."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shoal.bench import control
from shoal.bench.harness import NOTES_MARKER, update_doc as data_plane_update_doc


def section(text: str) -> str:
    return f"{control.CONTROL_BEGIN}\n{text}\n{control.CONTROL_END}\n"


def test_section_lives_after_the_data_plane_notes_and_survives_both_benches(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# data plane\n\ntable\n\n" + NOTES_MARKER + "\n\nnotes\n")
    control.update_doc(doc, section("first"))
    text = doc.read_text()
    assert text.index(NOTES_MARKER) < text.index("first") and "notes" in text
    control.update_doc(doc, section("second"))
    text = doc.read_text()
    assert "first" not in text and text.count(control.CONTROL_BEGIN) == 1 and "second" in text
    data_plane_update_doc(doc, "# data plane, new run\n")  # the other bench rewrites its part
    text = doc.read_text()
    assert text.startswith("# data plane, new run") and "second" in text and "notes" in text


def test_section_in_a_new_file(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    control.update_doc(doc, section("only"))
    text = doc.read_text()
    assert NOTES_MARKER in text and text.index(NOTES_MARKER) < text.index("only")


def test_percentiles() -> None:
    xs = [float(i) for i in range(100)]
    assert control.pct(xs, 0.5) == 50 and control.pct(xs, 0.99) == 99 and control.pct([3.0], 0.99) == 3.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_small_real_run() -> None:
    opts = argparse.Namespace(nodes=40, size=10, rounds=1, workers=2, concurrency=16, seed=3, timeout=100)
    res = control.run(opts)
    assert res["login"]["nodes"] == 40
    assert res["presence"]["events"] == 8 and res["presence"]["deliveries"] == 8 * 9
    assert res["presence"]["p99_ms"] < 1000 and res["server_cpu_total_s"] > 0


def test_node_addresses_are_distinct_loopback_addresses_sixteen_to_a_prefix() -> None:
    import ipaddress

    from shoal.bench.control import NODES_PER_PREFIX, node_address

    addrs = [ipaddress.ip_address(node_address(i)) for i in range(10_000)]
    assert len(set(addrs)) == len(addrs) and all(a.is_loopback for a in addrs)
    prefixes = {ipaddress.ip_network(f"{a}/24", strict=False) for a in addrs}
    assert len(prefixes) == 10_000 // NODES_PER_PREFIX
    assert all(not str(a).endswith((".0", ".255")) for a in addrs)
