"""Print a vLLM wheel's requirements minus the packages the NGC image already builds.

vLLM pins an exact torch (and torchvision, xformers, triton built for it); NGC's torch is
a source build with its own version string, so those pins must not be installed over it.
Usage: python vllm_requirements.py WHEEL > requirements.txt
       python vllm_requirements.py --check-torch WHEEL   (exit 1 unless the installed torch
       has the major.minor version the wheel was built for: its C++ extensions need that ABI)
"""

import email
import re
import sys
import zipfile

PROVIDED_BY_IMAGE = {"torch", "torchvision", "torchaudio", "xformers", "triton"}


def _requires(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(metadata))
    return message.get_all("Requires-Dist") or []


def required_torch(wheel: str) -> str | None:
    """The torch version the wheel pins (`torch==X.Y.Z`, markers ignored), or None."""
    for requirement in _requires(wheel):
        match = re.match(r"^torch\s*==\s*([\d.]+)", requirement.strip())
        if match:
            return match.group(1)
    return None


def torch_matches(required: str, installed: str) -> bool:
    return required.split(".")[:2] == re.split(r"[+a-z]", installed, maxsplit=1)[0].split(".")[:2]


def requirements(wheel: str) -> list[str]:
    kept = []
    for requirement in _requires(wheel):
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower()
        if name not in PROVIDED_BY_IMAGE:
            kept.append(requirement)
    return kept


if __name__ == "__main__":
    if sys.argv[1] == "--check-torch":
        import torch

        required = required_torch(sys.argv[2])
        if required and not torch_matches(required, torch.__version__):
            sys.exit(f"this vLLM wheel is built for torch {required}, the image has torch {torch.__version__}; "
                     "use a base image whose torch matches (BASE_IMAGE) or the vLLM release built for it")
    else:
        print("\n".join(requirements(sys.argv[1])))
