#!/usr/bin/env bash
# Runs the fast tests through Bazel, offline, as CI does:
#
#   tools/bazel_test.sh [BAZEL_TEST_ARGS...]
#
# Installs Bazel 4.2.3 from Debian if it is missing (bazel-bootstrap and
# bazel-rules-java, ~12 s, pulls OpenJDK 17), needs the checkout's .venv
# (`make test` creates it), then runs
#   bazel test --config=offline --test_tag_filters=-slow,-reference //...
# Extra arguments go to `bazel test` (give options as --name=value); arguments
# that are target patterns replace //... . The exit code is bazel's (2 when
# .venv is missing).
set -uo pipefail

cd "$(dirname "$0")/.."
checkout="$(pwd)"

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

install_bazel() {
  local packages=(bazel-bootstrap bazel-rules-java)
  echo "bazel_test.sh: installing ${packages[*]} with apt-get" >&2
  # A fresh machine may have no package lists yet: update once, then retry.
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"; then
    as_root apt-get update -q &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
  fi
}

if ! command -v bazel >/dev/null || [[ ! -d /usr/share/bazel/rules/java ]]; then
  if ! install_bazel; then
    echo "bazel_test.sh: could not install Bazel (apt-get failed)." >&2
    exit 1
  fi
fi

if [[ ! -x "$checkout/.venv/bin/python3" ]] ||
   ! "$checkout/.venv/bin/python3" -c "
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(name) is None
             for name in ('pytest', 'tensorflow', 'tensorflow_compression')))"; then
  echo "bazel_test.sh: $checkout/.venv is missing or incomplete; Bazel's tests run" \
       "on it. Create it with 'make test' (or 'make .venv/.installed') first." >&2
  exit 2
fi

patterns=()
options=()
for arg in "$@"; do
  case "$arg" in
    -//* | -:* | -@*) patterns+=("$arg") ;;  # a subtracted target pattern
    -*) options+=("$arg") ;;
    *) patterns+=("$arg") ;;
  esac
done
if [[ ${#patterns[@]} == 0 ]]; then patterns=(//...); fi

events="$(mktemp -t bazel_events.XXXXXX.json)"
trap 'rm -f "$events"' EXIT

bazel test --config=offline \
  --test_tag_filters=-slow,-reference \
  --build_event_json_file="$events" \
  "${options[@]}" -- "${patterns[@]}"
status=$?

# One closing line with the pytest test-case counts (bazel's own counts targets).
"$checkout/.venv/bin/python3" tools/bazel/test_summary.py "$events" || true

# CI machines keep running after the job: do not leave the Bazel server behind
# (elsewhere it exits by itself after 10 idle minutes, see .bazelrc).
if [[ -n "${CI:-}" ]]; then
  bazel shutdown
fi
exit "$status"
