"""`pytest_files`: one Bazel test per pytest file and marker group.

Each `tests/test_*.py` becomes up to three `py_test` targets that run the file
through `//tools/bazel:pytest_main.py`:

  test_foo            -m "not slow and not reference"   (tag "fast")
  test_foo.slow       -m "slow and not reference"       (tag "slow", size large)
  test_foo.reference  -m "reference"                    (tags "reference", "manual")

and the package gets the suites `fast`, `slow` and `reference`. The suffixes
start with a dot because a file's name cannot (test_lpips.py and
test_lpips_reference.py both exist). A target whose
marker selects nothing in its file passes with a note (the file has no tests
of that kind). "manual" keeps the reference tests (they need the PyTorch `lpips`
package, see `make test-reference`) out of `//...`; run `//tests:reference`.
"""

_GROUPS = [
    # (target suffix, pytest -m expression, tags, size)
    ("", "not slow and not reference", ["fast"], "medium"),
    (".slow", "slow and not reference", ["slow"], "large"),
    (".reference", "reference", ["reference", "manual"], "large"),
]

def pytest_files(srcs, deps = [], data = []):
    """Declares the tests of `srcs` (pytest files) and the suites fast/slow/reference.

    Args:
      srcs: the test files, e.g. glob(["test_*.py"]).
      deps: py_library targets the tests import.
      data: files the tests read at run time (fixtures, pyproject.toml, conftest.py).
    """
    suites = {"fast": [], "slow": [], "reference": []}
    for src in srcs:
        if not src.endswith(".py"):
            fail("pytest_files: %s is not a Python file" % src)
        base = src[:-len(".py")].replace("/", "_")
        for suffix, marker, tags, size in _GROUPS:
            name = base + suffix
            native.py_test(
                name = name,
                srcs = ["//tools/bazel:pytest_main.py", src],
                main = "//tools/bazel:pytest_main.py",
                args = [
                    "$(rootpath %s)" % src,
                    "--allow-empty",
                    "-m",
                    "'%s'" % marker,
                ],
                data = data,
                deps = deps,
                python_version = "PY3",
                srcs_version = "PY3",
                legacy_create_init = False,
                size = size,
                # Importing TensorFlow alone takes seconds on a busy 2-core machine.
                timeout = "long",
                tags = tags,
            )
            suites[tags[0]].append(":" + name)
    for suite, tests in suites.items():
        native.test_suite(name = suite, tests = tests)
