#!/usr/bin/env bash
# Install (Debian packages) and start the servers and binaries the test suite talks to. Idempotent: a
# package already installed or a server already answering is left alone. Needs root (or sudo) for apt.
set -uo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else echo "test-services: not root and no sudo; skipping installs"; fi
fi

apt_updated=0
need_pkg() {  # need_pkg BINARY PACKAGE...
  local bin=$1; shift
  if ! command -v "$bin" >/dev/null 2>&1 && [ -x "/usr/bin/$bin" ] ; then return 0; fi
  command -v "$bin" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then echo "test-services: $bin missing and no apt-get"; return 0; fi
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq >/dev/null 2>&1 || true; apt_updated=1; fi
  echo "test-services: installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || echo "test-services: could not install $*"
}

# Prometheus server + promtool (alert rule unit tests, scrape test).
need_pkg promtool prometheus
# Stop the Debian service's own Prometheus if the package started one: tests run their own on loopback.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; fi

# Headless Chromium and its WebDriver (the wheel dashboard's browser test drives Debian's build through
# Selenium; nothing downloads a browser of its own). apt runs only when /usr/bin/chromium is absent.
need_pkg chromium chromium chromium-driver
need_pkg chromedriver chromium-driver
# shellcheck: actionlint checks the workflows' run: scripts with it (tests/integration/test_training_deploy.py).
need_pkg shellcheck shellcheck

# PostgreSQL on 127.0.0.1:5432 (trust auth on this kind of machine).
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for v in $(ls /etc/postgresql); do $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  fi
fi
if ! command -v pg_isready >/dev/null 2>&1; then
  need_pkg pg_isready postgresql
  if [ -d /etc/postgresql ]; then
    for v in $(ls /etc/postgresql); do $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  fi
fi
# The test database (idempotent).
if command -v psql >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='greekfire_test'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE greekfire_test" >/dev/null 2>&1 || true
fi
# Redis on 127.0.0.1:6379 (the trading API's shared rate limits).
redis_up() { command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  need_pkg redis-server redis-server
  if command -v redis-server >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no >/dev/null 2>&1 || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do redis_up && break; sleep 0.5; done
  fi
fi
redis_up || echo "test-services: Redis is not answering on 127.0.0.1:6379"

# Object stores. The tests start each server once per session on a free loopback port (tests/object_stores.py);
# here we only install what they run. moto's S3 server and gcp-storage-emulator come with the dev extra
# (`make dev`); Azurite (Azure Blob) comes from the npm registry into .tools/azurite, never globally.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AZURITE_VERSION=3.35.0  # the newest release that supports node 18 (Debian 12) as well as 20 and 22
AZURITE_BIN="$ROOT/.tools/azurite/node_modules/.bin/azurite-blob"
if [ ! -x "$AZURITE_BIN" ] || ! "$AZURITE_BIN" --version 2>/dev/null | grep -qx "$AZURITE_VERSION"; then
  need_pkg node nodejs
  need_pkg npm npm
  if command -v npm >/dev/null 2>&1; then
    echo "test-services: installing azurite@$AZURITE_VERSION into .tools/azurite"
    npm install --prefix "$ROOT/.tools/azurite" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null \
      || echo "test-services: could not install azurite"
  fi
fi
[ -x "$AZURITE_BIN" ] || echo "test-services: Azurite is missing (needs node and npm); the Azure storage tests skip"
# Prometheus pushgateway (training runs push their metrics; the tests start it on a free loopback port).
need_pkg prometheus-pushgateway prometheus-pushgateway
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus-pushgateway >/dev/null 2>&1 || true; fi
command -v prometheus-pushgateway >/dev/null 2>&1 || echo "test-services: prometheus-pushgateway is missing; the registry cycle test skips"

# MLflow tracking server (PostgreSQL backend store, artifacts on S3). The registry cycle test starts its own, on
# a fresh database and moto's S3 server, through greekfire.training.mlflow_server; `mlflow` comes with the ml
# extra. To run one by hand for a team or a debugging session:
#   python -m greekfire.training.mlflow_server --port 5000 \
#     --backend-store-uri postgresql+psycopg://postgres@127.0.0.1:5432/greekfire_mlflow \
#     --artifacts-destination s3://BUCKET/artifacts --s3-endpoint-url http://127.0.0.1:9000
# and set GREEKFIRE_TRAINING__MLFLOW_TRACKING_URI=http://127.0.0.1:5000.
[ -x "$ROOT/.venv/bin/mlflow" ] || command -v mlflow >/dev/null 2>&1 \
  || echo "test-services: mlflow is missing: install the ml extra (make dev)"

for tool in moto_server gcp-storage-emulator; do
  [ -x "$ROOT/.venv/bin/$tool" ] || command -v "$tool" >/dev/null 2>&1 \
    || echo "test-services: $tool is missing: install the dev extra (make dev)"
done

echo "test-services: ready"
