"""The import contract: the decision core imports no transport and no store driver.

sidecar.engine, state, rules, policy (the package and every submodule), validation, wire and
errors may not import flask, werkzeug, granian, gunicorn, redis or sqlite3, directly or through
anything they import; sidecar.policy may not import sidecar.engine (policy suites, which run the
engine, live in sidecar.suites). sidecar.stores.base (the store interface the core and the sync
thread import) pulls in no store driver either.

Two checks per rule: a static pass over each module's own `import` lines, so a failure names the
file and line, and a fresh interpreter that imports the module and looks at sys.modules, which
also catches an import made by something the module imports.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sidecar"

TRANSPORT_AND_DRIVERS = ("flask", "werkzeug", "granian", "gunicorn", "redis", "sqlite3")
PURE = ["sidecar.engine", "sidecar.state", "sidecar.rules", "sidecar.validation", "sidecar.wire", "sidecar.errors",
        "sidecar.policy", *sorted(f"sidecar.policy.{p.stem}" for p in (PACKAGE / "policy").glob("*.py")
                                  if p.stem != "__init__")]
# module -> top-level names (or sidecar-internal module prefixes) it may not import
FORBIDDEN: dict[str, tuple[str, ...]] = {name: TRANSPORT_AND_DRIVERS for name in PURE}
for name in PURE:
    if name == "sidecar.policy" or name.startswith("sidecar.policy."):
        FORBIDDEN[name] = (*TRANSPORT_AND_DRIVERS, "sidecar.engine")
FORBIDDEN["sidecar.stores.base"] = ("redis", "sqlite3")


def source_of(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_names(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, at any depth
    (a function-level import still runs); relative imports resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # `from sidecar import engine` imports the submodule sidecar.engine
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def hits(name: str, banned: tuple[str, ...]) -> str | None:
    for ban in banned:
        if name == ban or name.startswith(ban + "."):
            return ban
    return None


def test_the_contract_covers_real_modules() -> None:
    missing = [module for module in FORBIDDEN if not source_of(module).is_file()]
    assert missing == [], f"the contract names modules that do not exist: {missing}"
    assert "sidecar.policy.loader" in FORBIDDEN  # the policy submodules are found


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_no_forbidden_import_line(module: str) -> None:
    path = source_of(module)
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {name} (forbidden: {ban})"
           for line, name in imported_names(path, module)
           if (ban := hits(name, FORBIDDEN[module])) is not None]
    assert bad == [], f"{module} breaks the import contract:\n  " + "\n  ".join(bad)


def is_module(name: str) -> bool:
    return name.startswith("sidecar") and source_of(name).is_file()


def deps(module: str) -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) for the sidecar modules `module` runs on import:
    its own import lines, and its parent packages' __init__ (importing a.b runs a/__init__)."""
    path = source_of(module)
    out = [(module, line, name) for line, name in imported_names(path, module)]
    parent = module.rpartition(".")[0]
    if parent:
        out.append((module, 0, parent))
    return out


def import_chain(module: str, banned: tuple[str, ...]) -> list[str]:
    """A shortest chain of import lines from `module` to a banned import, found statically."""
    seen, queue = {module}, [(module, list[str]())]
    while queue:
        current, chain = queue.pop(0)
        for importer, line, name in deps(current):
            where = f"{source_of(importer).relative_to(ROOT)}:{line}" if line else f"{importer} (package)"
            step = [*chain, f"{where} imports {name}"]
            if hits(name, banned):
                return step
            if is_module(name) and name not in seen:
                seen.add(name)
                queue.append((name, step))
    return []


PROBE = """
import importlib, json, sys
before = set(sys.modules)
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.integration  # starts a process
def test_nothing_forbidden_is_imported_transitively() -> None:
    """Each module in a fresh interpreter (one per module: an earlier import must not hide a later one)."""
    problems = []
    for module, banned in sorted(FORBIDDEN.items()):
        done = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        pulled = sorted({f"{name} (forbidden: {ban})" for name in loaded if (ban := hits(name, banned))})
        if pulled:
            chain = import_chain(module, banned) or ["(no chain found in sidecar's import lines)"]
            problems.append(f"importing {module} loads: {', '.join(pulled)}; through:\n    " + "\n    ".join(chain))
    assert problems == [], "\n".join(problems)
