#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what the GPU machine of the `device` tool lacks for
# scripts/device_check.sh: wheels of hydra-core, omegaconf and antlr4-python3-runtime (its image
# has torch, transformers, safetensors, rich, numpy and pandas) and the GPT-2 tokenizer of
# ../shared (../shared does not travel). Needs PyPI; run it here, then from the session:
#
#   run(command="bash scripts/device_check.sh", carry=[".device"], timeout_s=590)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${EDIT_RUNNER_SHARED:-$repo/../shared}"
python="${PYTHON:-$repo/.venv/bin/python}"
versions="$("$python" -c 'import hydra, omegaconf; print(hydra.__version__, omegaconf.__version__)')"
read -r hydra_version omegaconf_version <<<"$versions"
rm -rf "$repo/.device"
mkdir -p "$repo/.device/whl" "$repo/.device/shared/models"
"$python" -m pip wheel -q --no-deps -w "$repo/.device/whl" \
    "hydra-core==$hydra_version" "omegaconf==$omegaconf_version" "antlr4-python3-runtime==4.9.3"
cp -r "$shared/models/gpt2-tokenizer" "$repo/.device/shared/models/"
du -sh "$repo/.device"
