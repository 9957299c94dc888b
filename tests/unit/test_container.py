"""The container recipe: lints cleanly, pins agree with the project's declared versions,
and never installs a torch over the NGC image's build. (No Docker engine runs here.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "containers" / "Dockerfile"


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def declared(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    candidates = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in candidates:
        requirement = Requirement(text)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"{name} is not declared in pyproject.toml")


def no_deps_pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "no-deps.txt").read_text().splitlines()
    return dict(re.findall(r"^([\w.-]+)==([\w.]+)", "\n".join(lines), flags=re.M))


def test_dockerfile_lints_cleanly_with_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_an_ngc_pytorch_release():
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", dockerfile_args()["BASE_IMAGE"])


@pytest.mark.parametrize("arg, package", [("VLLM_VERSION", "vllm"), ("MEGATRON_CORE_VERSION", "megatron-core"),
                                          ("RAY_VERSION", "ray")])
def test_pinned_versions_satisfy_pyproject(arg, package):
    version = dockerfile_args()[arg]
    requirement = declared(package)
    assert requirement.specifier.contains(version), f"{package}=={version} violates pyproject's {requirement}"


def test_no_deps_pins_match_requirements_no_deps():
    args, pins = dockerfile_args(), no_deps_pins()
    assert args["NEMO_RUN_VERSION"] == pins["nemo-run"]
    assert args["LEPTONAI_VERSION"] == pins["leptonai"]


def test_image_torch_is_kept():
    text = DOCKERFILE.read_text()
    assert 'test -n "${PIP_CONSTRAINT:-}" && test -f "${PIP_CONSTRAINT}"' in text
    for command in re.findall(r"pip install[^&\n]*", text):
        assert not re.search(r"\btorch\b", command), command
    assert "pip install --no-deps /tmp/vllm/vllm-*.whl" in text


def test_vllm_requirement_filter_drops_what_the_image_provides(tmp_path):
    sys.path.insert(0, str(ROOT / "containers"))
    try:
        from vllm_requirements import requirements
    finally:
        sys.path.pop(0)
    wheel = tmp_path / "vllm-0.0.0-py3-none-any.whl"
    metadata = "\n".join(["Metadata-Version: 2.1", "Name: vllm", "Version: 0.0.0", "Requires-Dist: torch==2.7.1",
                          "Requires-Dist: torchvision==0.22.1", "Requires-Dist: xformers==0.0.30; platform_system == 'Linux'",
                          "Requires-Dist: transformers>=4.53", "Requires-Dist: ray[cgraph]>=2.43",
                          "Requires-Dist: pytest; extra == 'test'", "", ""])
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm-0.0.0.dist-info/METADATA", metadata)
    assert requirements(str(wheel)) == ["transformers>=4.53", "ray[cgraph]>=2.43"]


def test_build_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "containers" / "build.sh")]).returncode == 0
