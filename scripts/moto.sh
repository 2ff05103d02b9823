#!/usr/bin/env bash
# Source this: installs moto's SQS server (once, into a virtualenv under ~/.cache),
# starts it on a free 127.0.0.1 port, waits until it answers, and exports
# SQS_ENDPOINT_URL and test AWS credentials. The caller stops it with `moto_stop`.
#
# moto core + flask is all moto_server needs for SQS (about 140 MB, 25 s cold);
# 'moto[server]' would add cfn-lint, docker and others for nothing.

MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
MOTO_VENV="${MOTO_VENV:-$HOME/.cache/sqscale/moto-venv-$MOTO_VERSION}"
MOTO_LOG="${MOTO_LOG:-${TMPDIR:-/tmp}/sqscale-moto.$$.log}"

moto_install() {
  if "$MOTO_VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "installing moto $MOTO_VERSION into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check \
    "moto==$MOTO_VERSION" "flask==3.1.3" "flask-cors==6.0.5"
}

moto_start() {
  moto_install
  MOTO_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # A second purge within 60 s fails on real SQS; tests purge freely.
  MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR=false \
    "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 150); do
    if curl -sf -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/data.json"; then
      break
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "moto_server died:" >&2
      cat "$MOTO_LOG" >&2
      return 1
    fi
    sleep 0.2
  done
  curl -sf -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/data.json" || {
    echo "moto_server is not answering on port $MOTO_PORT" >&2
    cat "$MOTO_LOG" >&2
    return 1
  }
  export SQS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  export MOTO_PID MOTO_PORT MOTO_VENV
  echo "moto $MOTO_VERSION at $SQS_ENDPOINT_URL (pid $MOTO_PID)"
}

moto_stop() {
  if [ -n "${MOTO_PID:-}" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    rm -f "$MOTO_LOG"
    MOTO_PID=
  fi
}
