"""The package boundaries of docs/architecture.md, checked on the source (every import statement).

- The gateway imports nothing from ``workers`` but the contract (``workers.contract``) and the
  shipped demo model's paths and rules (``workers.demo_model``, not its torch builder).
- The registry imports nothing from ``gateway``, and from ``workers`` only the contract's names.
- The contract imports no other ``workers`` module.
- Only the engine (``workers.engine``) and the demo model's builder import torch, transformers or peft.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "safetensors.torch")
GATEWAY_MAY_IMPORT = ("workers.contract", "workers.demo_model")
GATEWAY_MAY_NOT_IMPORT = ("workers.demo_model.build",)
TORCH_ALLOWED = ("workers/engine/", "workers/demo_model/build.py")


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement in ``path`` names (``from a import b`` names ``a`` and ``a.b``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(package: str, bad: Callable[[Path, str], bool]) -> list[str]:
    found = []
    for path in sources(package):
        for line, module in imports(path):
            if bad(path, module):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return sorted(set(found))


def test_gateway_imports_only_the_contract_and_the_demo_model_from_workers() -> None:
    def bad(_: Path, module: str) -> bool:
        if not within(module, ("workers",)) or module == "workers":
            return False
        return not within(module, GATEWAY_MAY_IMPORT) or within(module, GATEWAY_MAY_NOT_IMPORT)

    assert violations("gateway", bad) == []


def test_registry_imports_neither_the_gateway_nor_the_workers() -> None:
    assert violations("registry", lambda _, m: within(m, ("gateway", "workers"))) == []


def test_the_contract_imports_no_other_worker_module() -> None:
    def bad(_: Path, module: str) -> bool:
        return within(module, ("workers",)) and module != "workers" and not within(module, ("workers.contract",))

    assert violations("workers/contract", bad) == []


def test_only_the_engine_imports_torch() -> None:
    def bad(path: Path, module: str) -> bool:
        allowed = any(str(path.relative_to(ROOT)).startswith(p) for p in TORCH_ALLOWED)
        return within(module, HEAVY) and not allowed

    for package in ("gateway", "registry", "workers", "migrations"):
        assert violations(package, bad) == [], package


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rules above would catch a gateway module reaching into the worker (guards the checker)."""
    module = tmp_path / "sneaky.py"
    module.write_text("from workers.runtime import Runtime\nimport workers.contract.names\nimport torch\n")
    named = [m for _, m in imports(module)]
    assert "workers.runtime" in named and "workers.contract.names" in named and "torch" in named
    assert not within("workers.runtime", GATEWAY_MAY_IMPORT)
    assert within("workers.contract.names", GATEWAY_MAY_IMPORT)
