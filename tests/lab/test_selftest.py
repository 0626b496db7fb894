"""Tests of shoal.lab.selftest: classification (unit) and every NAT type measured (lab)."""

from __future__ import annotations

import os

import pytest

from shoal.lab import Lab
from shoal.lab.selftest import EXPECTED, all_types_topology, classify, format_table, run_selftest

A1, A2, P1, P2 = "192.0.2.1", "192.0.2.2", 3478, 3479


def _res(local: str, m11: str, m12: str, m21: str, got: list[str]) -> dict:
    return {"udp": True, "local": local,
            "mapping": {f"{A1}:{P1}": m11, f"{A1}:{P2}": m12, f"{A2}:{P1}": m21}, "filter": got}


ALL = [f"{A1}:{P1}", f"{A1}:{P2}", f"{A2}:{P1}"]


@pytest.mark.parametrize("res, mapping, filtering", [
    (_res("1.1.1.1:5", "1.1.1.1:5", "1.1.1.1:5", "1.1.1.1:5", ALL), "none", "open"),
    (_res("10.0.0.2:5", "9.9.9.9:5", "9.9.9.9:5", "9.9.9.9:5", ALL), "EIM", "EIF"),
    (_res("10.0.0.2:5", "9.9.9.9:5", "9.9.9.9:5", "9.9.9.9:5", ALL[:2]), "EIM", "ADF"),
    (_res("10.0.0.2:5", "9.9.9.9:5", "9.9.9.9:5", "9.9.9.9:7", ALL[:1]), "ADM", "APDF"),
    (_res("10.0.0.2:5", "9.9.9.9:5", "9.9.9.9:6", "9.9.9.9:7", ALL[:1]), "APDM", "APDF"),
    (_res("10.0.0.2:5", "9.9.9.9:5", "9.9.9.9:6", "9.9.9.9:7", []), "APDM", "?"),
])
def test_classify(res: dict, mapping: str, filtering: str) -> None:
    assert classify(res, A1, A2, P1, P2) == {"udp": "ok", "mapping": mapping, "filtering": filtering}


def test_classify_blocked() -> None:
    assert classify({"udp": False}, A1, A2, P1, P2)["udp"] == "blocked"


@pytest.mark.lab
@pytest.mark.timeout(90)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_every_nat_type_measures_as_intended() -> None:
    with Lab(all_types_topology()) as lab:
        rows = run_selftest(lab)
    table = format_table(rows)
    print(table)
    assert {r.nat for r in rows if "@" not in r.nat} == set(EXPECTED)
    hairpin = {r.nat: r.measured["hairpin"] for r in rows if "@" in r.nat}
    assert hairpin == {"port-restricted @hairpin": "yes", "port-restricted @nohair": "no"}
    assert all(r.ok for r in rows), table
