"""Runs one pytest file as a Bazel test.

Usage (what `tests/defs.bzl` generates): pytest_main.py FILE [--allow-empty]
[PYTEST_ARGS...]. The exit code is pytest's, so Bazel reports the target as
failed when any test in FILE fails or errors.

Bazel's test protocol is honoured: results go to $XML_OUTPUT_FILE (JUnit XML,
per test case), temporary files to $TEST_TMPDIR, and `bazel test
--test_filter=EXPR` becomes pytest's `-k EXPR`.
"""

import os
import sys

import pytest


def pytest_args(argv, environ):
  """Returns (pytest argument list, allow_empty) for this runner's `argv`."""
  if not argv:
    raise SystemExit("usage: pytest_main.py FILE [--allow-empty] [PYTEST_ARGS...]")
  test_file, rest = argv[0], list(argv[1:])
  allow_empty = "--allow-empty" in rest
  if allow_empty:
    rest.remove("--allow-empty")
  # pytest's cache directory would land in the runfiles tree: leave it out.
  args = [test_file, "-p", "no:cacheprovider"] + rest
  if environ.get("XML_OUTPUT_FILE"):
    args.append("--junitxml=" + environ["XML_OUTPUT_FILE"])
  if environ.get("TEST_TMPDIR"):
    args.append("--basetemp=" + os.path.join(environ["TEST_TMPDIR"], "pytest"))
  if environ.get("TESTBRIDGE_TEST_ONLY"):
    args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
  return args, allow_empty


def main():
  args, allow_empty = pytest_args(sys.argv[1:], os.environ)
  # pytest.main edits the list it is given (it inserts the ini file's addopts).
  code = pytest.main(list(args))
  if code == pytest.ExitCode.NO_TESTS_COLLECTED and allow_empty:
    # A file split by marker (fast / slow / reference) often has nothing under
    # one of the markers; that target then has nothing to run, which is fine.
    marker = args[args.index("-m") + 1] if "-m" in args else ""
    print(f"{args[0]}: no test collected with -m {marker!r} (see above); "
          "nothing to run.")
    return 0
  return int(code)


if __name__ == "__main__":
  sys.exit(main())
