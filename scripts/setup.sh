# Sourced by demo.sh and test.sh: create .venv (once) and install the project into it, with
# the dependency versions of requirements.lock (the tested ones, as in the container image).
# Usage: SETUP_EXTRAS=broker,plots . scripts/setup.sh   (a sourced script sees its caller's
# "$@", so the extras come in a variable; pyproject.toml lists them)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || { echo "dc-twin needs Python 3.11+ (set PYTHON=...)" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
extras="${SETUP_EXTRAS:-}"
target="."
[[ -n "$extras" ]] && target=".[$extras]"
# Keep the install quiet; show its log only when it fails.
log="$(mktemp)"
if ! { .venv/bin/python -m pip install --upgrade pip \
       && .venv/bin/python -m pip install -c requirements.lock -e "$target"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing dc-twin into .venv failed (log above)" >&2
    exit 1
fi
rm -f "$log"
export PATH="$root/.venv/bin:$PATH"
