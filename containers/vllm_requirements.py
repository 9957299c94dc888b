"""Print a vLLM wheel's requirements minus the packages the NGC image already builds.

vLLM pins an exact torch (and torchvision, xformers, triton built for it); NGC's torch is
a source build with its own version string, so those pins must not be installed over it.
Usage: python vllm_requirements.py WHEEL > requirements.txt
"""

import email
import re
import sys
import zipfile

PROVIDED_BY_IMAGE = {"torch", "torchvision", "torchaudio", "xformers", "triton"}


def requirements(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(metadata))
    kept = []
    for requirement in message.get_all("Requires-Dist") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower()
        if name not in PROVIDED_BY_IMAGE:
            kept.append(requirement)
    return kept


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
