#!/bin/sh
# The Python interpreter of this workspace's Bazel toolchain: the checkout's
# .venv (created with the pinned stack by `make test`), so that `bazel test`
# and `bazel run` use the same TensorFlow, tfc and pytest as the Makefile.
#
# Bazel runs this file through a runfiles symlink; resolving the link finds the
# checkout it belongs to, wherever that checkout is.
set -u
checkout="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
venv_python="$checkout/.venv/bin/python3"
if [ ! -x "$venv_python" ]; then
  echo "error: $venv_python does not exist. Create the checkout's .venv with" \
       "'make test' (or 'make .venv/.installed') before running Bazel." >&2
  exit 2
fi
exec "$venv_python" "$@"
