"""Prints one closing line for a `bazel test` run: `bazel: N passed, N failed, N skipped`.

Usage: test_summary.py BUILD_EVENTS.json (from `bazel test --build_event_json_file=...`).

Bazel's own summary counts test targets; this counts the pytest test cases of
the targets that run reported (cached ones included), read from the JUnit XML
each target wrote. A target that failed without XML (a crash or timeout before
pytest wrote it) counts as one failure.
"""

import json
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree


def last_attempts(events):
  """Returns {(label, run, shard): testResult} keeping each test's last attempt."""
  results = {}
  for event in events:
    if "testResult" not in event:
      continue
    key = event["id"]["testResult"]
    slot = (key["label"], key.get("run", 1), key.get("shard", 1))
    attempt = key.get("attempt", 1)
    if slot not in results or results[slot][0] < attempt:
      results[slot] = (attempt, event["testResult"])
  return {slot: result for slot, (_, result) in results.items()}


def case_counts(result):
  """(passed, failed, skipped) test cases of one test result."""
  xml_uri = next((output["uri"] for output in result.get("testActionOutput", [])
                  if output.get("name") == "test.xml"), None)
  status_failed = result.get("status", "") != "PASSED"
  if xml_uri is None:
    return (0, 1, 0) if status_failed else (0, 0, 0)
  path = urllib.request.url2pathname(urllib.parse.urlparse(xml_uri).path)
  try:
    root = ElementTree.parse(path).getroot()
  except (OSError, ElementTree.ParseError):
    return (0, 1, 0) if status_failed else (0, 0, 0)
  suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
  passed = failed = skipped = 0
  for suite in suites:
    tests = int(suite.get("tests", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skip = int(suite.get("skipped", 0))
    passed += tests - bad - skip
    failed += bad
    skipped += skip
  if status_failed and failed == 0:
    failed = 1  # e.g. pytest passed but the process then crashed.
  return passed, failed, skipped


def main(argv):
  if len(argv) != 2:
    raise SystemExit(__doc__)
  with open(argv[1]) as stream:
    events = [json.loads(line) for line in stream if line.strip()]
  totals = [0, 0, 0]
  results = last_attempts(events)
  for result in results.values():
    for index, count in enumerate(case_counts(result)):
      totals[index] += count
  if not results:
    print("bazel: no test target ran")
    return 0
  print("bazel: %d passed, %d failed, %d skipped" % tuple(totals))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
