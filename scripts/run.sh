#!/usr/bin/env bash
# The README's first command: generate one clip with ComfyUI 0.3.75 + this pack on a fresh machine.
#
#   bash scripts/run.sh                                  # the default prompt
#   bash scripts/run.sh "a blue lamp blinking slowly, a low hum"
#   bash scripts/run.sh "a green drum beating fast" -- --seed 7 --steps 10 --keep-server
#
# Builds (first run, a few minutes) or reuses the Python environment of scripts/dev_env.sh, then runs
# scripts/main_job.py, which prints the absolute path of the MP4 (under ./outputs/) as its last line.
# MMG_PYTHON=/path/to/python skips the environment build and uses that interpreter instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

args=()
if [ $# -gt 0 ] && [ "$1" != "--" ] && [ "${1#-}" = "$1" ]; then
  args+=(--prompt "$1")
  shift
fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then
  shift
fi

python="${MMG_PYTHON:-}"
if [ -z "$python" ]; then
  python="$(bash "$root/scripts/dev_env.sh")"
fi
exec "$python" "$root/scripts/main_job.py" ${args[@]+"${args[@]}"} "$@"
