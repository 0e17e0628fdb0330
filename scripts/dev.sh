#!/usr/bin/env bash
# One entry point for set-up and the two README commands. Idempotent: the virtual
# environment is created once and reinstalled only when pyproject.toml changes.
#   bash scripts/dev.sh run    venv + install + real Production model + `dvc repro`
#   bash scripts/dev.sh test   venv + install + the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.emovision-installed" want
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$PY" -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$want" > "$stamp"
  fi
}

case "${1:-}" in
  run)
    setup
    export PATH="$PWD/$VENV/bin:$PATH"
    # Without FER2013 the pipeline trains on the demo set; the shipped FER2013 model keeps
    # the registry's Production slot real (it is only replaced by a better FER2013 model).
    if [ -f emovision/weights/config.json ]; then python -m stages.promote --pretrained; fi
    dvc repro
    ;;
  test)
    setup
    shift
    "$PY" -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh run|test [pytest args]" >&2
    exit 2
    ;;
esac
