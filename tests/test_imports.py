"""The import graph of src/shoal, read with ast (nothing is imported): no module cycles, and the
product never imports the lab harness, the test support or the benchmarks (issue 12).

Product = every package except `shoal.lab`, `shoal.testing` and `shoal.bench`; those three may
import the product (and `lab`/`bench` may use `testing`). Imports inside functions count too:
a lazy import is still a dependency, only a later one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HARNESS = ("shoal.lab", "shoal.testing", "shoal.bench")


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "shoal").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _package_of(module: str, mods: dict[str, Path]) -> str:
    return module if mods[module].name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, mods: dict[str, Path]) -> set[str]:
    """The shoal modules `module` imports (a `from pkg import name` names the submodule when
    `name` is one, else the package). Its own ancestor packages are left out: Python imports
    them first whatever the module says, so a package that imports its submodules is no cycle."""
    tree = ast.parse(mods[module].read_text(), str(mods[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(module, mods).split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in mods and m != module and not module.startswith(m + ".")}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, mods) for m in mods}


def _harness(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HARNESS)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_reader_sees_real_imports() -> None:
    g = _graph()
    assert "shoal.wireguard.device" in g and "shoal.constants" in g["shoal.wireguard.device"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_product_never_imports_lab_testing_or_bench() -> None:
    bad = sorted(f"{m} imports {d}" for m, deps in _graph().items() if not _harness(m)
                 for d in deps if _harness(d))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("harness", HARNESS)
def test_harness_packages_exist(harness: str) -> None:
    assert harness in _modules()
