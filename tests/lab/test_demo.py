"""Lab-tier test of shoal.lab.demo: the default demo succeeds; a failing extra step is reported."""

from __future__ import annotations

import os

import pytest

from shoal.lab import runs
from shoal.lab.demo import DEFAULT_STEPS, DemoStep, demo

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def test_demo_runs_extends_and_cleans_up() -> None:
    lines: list[str] = []
    seen: list[str] = []

    def extra(lab, out) -> bool:        # a later feature's step gets the live lab
        seen.append(lab.run_id)
        out("extra step ran")
        return lab.host("alice").exec(["true"]).returncode == 0

    def broken(lab, out) -> bool:
        raise RuntimeError("deliberately broken")

    assert demo(steps=[*DEFAULT_STEPS, DemoStep("extra", extra)], out=lines.append) == 0
    text = "\n".join(lines)
    assert "extra step ran" in text and "4/4 steps ok" in text and " NO " not in text
    assert not [n for n in runs.list_namespaces() if n.startswith(seen[0] + "-")]
    lines.clear()
    assert demo(steps=[DemoStep("broken", broken)], out=lines.append) == 1
    assert any("deliberately broken" in ln for ln in lines)
