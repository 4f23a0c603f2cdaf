#!/usr/bin/env bash
# The test command: sets up what the tests need (once), then runs the whole suite, including the
# real ComfyUI 0.3.75 server tests and the headless-Chromium workflow check.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not server"`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/system_deps.sh"
python="$(bash "$root/scripts/dev_env.sh")"
cd "$root"
exec "$python" -m pytest tests -q -rs "$@"
