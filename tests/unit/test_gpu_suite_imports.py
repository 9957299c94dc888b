"""Every import the GPU smoke suite (tests/gpu) makes from this project resolves, on CPU.

The GPU tests import most things inside their bodies (so that collection on a CPU host is
free); a renamed module or name then only shows up as a FAIL on a GPU machine, which may be
lent rarely. This parses every file under tests/gpu with `ast` (function bodies included) and
resolves each `gdpo_megatron` import, module and name, plus the suite's own helper modules
(gpu_helpers, helpers.*, the shared integration helpers), the way tests/gpu/conftest.py puts
them on sys.path.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
GPU = TESTS / "gpu"
# Modules the suite imports from the tests tree (conftest.py adds tests/ and tests/integration).
LOCAL_ROOTS = ("gpu_helpers", "helpers", "test_generation_refit")


def imports_of(source: str) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) for every project / helper import anywhere in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root == "gdpo_megatron" or root in LOCAL_ROOTS:
                found.extend((node.lineno, node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root == "gdpo_megatron" or root in LOCAL_ROOTS:
                    found.append((node.lineno, alias.name, None))
    return found


def unresolved(module: str, name: str | None) -> str | None:
    """Why `from module import name` (or `import module`) fails, or None when it resolves."""
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        return f"module {module!r}: {exc}"
    if name is None or name == "*" or hasattr(imported, name):
        return None
    try:  # `from package import submodule`
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return f"{module!r} has no name {name!r}"
    return None


@pytest.fixture(scope="module", autouse=True)
def suite_path():
    added = [p for p in (str(GPU), str(TESTS), str(TESTS / "integration")) if p not in sys.path]
    sys.path[:0] = added
    yield
    for p in added:
        sys.path.remove(p)


def gpu_files() -> list[Path]:
    return sorted(GPU.rglob("*.py"))


def test_the_suite_has_files_and_project_imports():
    files = gpu_files()
    assert {"conftest.py", "test_policy_gpu.py", "test_refit_gpu.py"} <= {f.name for f in files}
    total = sum(len(imports_of(f.read_text())) for f in files)
    assert total >= 30, total  # the scan sees the imports inside function bodies


@pytest.mark.parametrize("path", gpu_files(), ids=lambda p: p.name)
def test_every_project_import_in_the_gpu_suite_resolves(path):
    problems = [f"{path.name}:{line}: {why}" for line, module, name in imports_of(path.read_text())
                if (why := unresolved(module, name))]
    assert not problems, "\n".join(problems)


def test_the_checker_flags_a_missing_module_and_a_missing_name():
    source = (
        "def test_x():\n"
        "    from gdpo_megatron.policy.policy import MegatronPolicy\n"          # module does not exist
        "    from gdpo_megatron.megatron_policy import MegatronPolicy, Nope\n"  # name does not exist
        "    import gdpo_megatron.conversion.exporter\n"
    )
    found = imports_of(source)
    assert [(line, module, name) for line, module, name in found] == [
        (2, "gdpo_megatron.policy.policy", "MegatronPolicy"),
        (3, "gdpo_megatron.megatron_policy", "MegatronPolicy"),
        (3, "gdpo_megatron.megatron_policy", "Nope"),
        (4, "gdpo_megatron.conversion.exporter", None),
    ]
    verdicts = [unresolved(module, name) for _, module, name in found]
    assert verdicts[0] is not None and "gdpo_megatron.policy.policy" in verdicts[0]
    assert verdicts[1] is None and verdicts[3] is None
    assert verdicts[2] == "'gdpo_megatron.megatron_policy' has no name 'Nope'"
