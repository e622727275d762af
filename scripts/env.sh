# Sourced by the other scripts: make sure .venv exists and holds dlqnb with its test extras.
# Reinstalls only when pyproject.toml changed. Uses pip (torch comes from the machine's wheel cache).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLQNB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "dlqnb: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.dlqnb-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    LOG="$VENV/install.log"
    echo "dlqnb: installing dlqnb and its dependencies into $VENV (log: $LOG)" >&2
    # pip and the build backend print warnings a newcomer cannot act on: keep them in the log, show it on failure
    if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip && "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"; } >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "dlqnb: installation failed; pip's output is above and in $LOG" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
