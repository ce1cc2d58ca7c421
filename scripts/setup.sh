# Sourced by scripts/test and scripts/demo: installs what a fresh machine lacks, and nothing else.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLFLOW_EXPORTER_TEST_VENV:-$ROOT/.venv}"
# The MLflow the tests are written against (its REST behaviour is checked by them).
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages, each given as "command:package"; apt-get runs only when a command is missing.
ensure_debs() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A virtualenv with MLflow, for the real tracking server the tests and the demo run.
ensure_venv() {
  if [ -x "$VENV/bin/mlflow" ] && "$VENV/bin/python" -c "import mlflow, sys; sys.exit(mlflow.__version__ != '$MLFLOW_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "==> installing mlflow==$MLFLOW_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
}
