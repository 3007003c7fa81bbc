# Sourced by scripts/demo and scripts/test: make .venv with sitectl installed from this checkout.
# Needs only Python 3.11+ (python3 or $PYTHON) with venv and pip.
#
# Installs the pinned, hash-checked versions of a lock file (requirements/lock.txt: runtime, dev
# and the cvxpy cross-check; requirements/runtime.txt when SITECTL_EXTRAS is set empty), then
# sitectl itself, editable and without resolving anything. Only when pyproject.toml, the lock or
# this script changed since the last install: a stamp in .venv/ holds their hash, so a second run
# needs no package registry. Regenerate the locks after changing a dependency (see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "sitectl needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
case "${SITECTL_EXTRAS-dev}" in
  dev) lock=requirements/lock.txt ;;
  "") lock=requirements/runtime.txt ;;
  *)
    echo "SITECTL_EXTRAS: 'dev' (the default) or empty (runtime only), got '$SITECTL_EXTRAS'" >&2
    exit 2
    ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sitectl-installed
want=$(.venv/bin/python -c '
import hashlib, sys
h = hashlib.sha256()
for name in sys.argv[1:]:
    h.update(name.encode() + b"\0")
    with open(name, "rb") as f:
        h.update(f.read())
print(h.hexdigest())' pyproject.toml "$lock" scripts/_setup.sh)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  rm -f "$stamp"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
  # The lock holds the build backend too, so building the editable install needs no registry.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
  echo "$want" >"$stamp"
fi
