"""Runs the README's examples top to bottom, as a user would (tests/test_docs.py).

    python tests/docs_check.py README.md WORKDIR

WORKDIR holds the user's files the README names (`photo.png`, `my_photos/`,
`kodak/`, `lpips_alex_v0.1.npz`); the examples run there, in README order:

- ```python blocks in this process, one namespace for all (as a notebook would);
- ```sh blocks in bash, where `dpc`, `dpc-train` and `dpc-export` are the
  checkout's programs (`python -m dpc_tf.cli`, `-m train`, `-m export`).

Only sizes shrink, so that everything runs in minutes on a CPU: the Python
text in `SUBSTITUTIONS` is replaced (each must occur exactly once, so the
check fails rather than runs something else when the README changes), and
`dpc-train` gets `TRAIN_OVERRIDES` after its own flags (absl: the last wins).
A block right after `<!-- docs-check: skip: REASON -->` is not run; every
other python/sh block is.
"""

import dataclasses
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"<!--\s*docs-check:\s*skip:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
RUN_LANGUAGES = ("python", "sh")

# (README text, what runs instead): model and data sizes only.
SUBSTITUTIONS = (
    ('from_patterns("my_photos/", min_size=256)', 'from_patterns("my_photos/", min_size=64)'),
    ("patch_size=256, global_batch_size=8", "patch_size=64, global_batch_size=2"),
    ('create_model("hyperprior", num_filters=128)', 'create_model("hyperprior", num_filters=8)'),
    ("epochs=10, steps_per_epoch=1000", "epochs=1, steps_per_epoch=2"),
    ('create_model("my_factorized")', 'create_model("my_factorized", num_filters=8)'),
)
TRAIN_OVERRIDES = ("--num_filters=8 --patch_size=64 --batch_size=2 --epochs=1 "
                   "--steps_per_epoch=3 --val_image_size=64")


@dataclasses.dataclass
class Block:
  language: str
  code: str
  line: int            # 1-based line of the opening fence
  skip: str = None     # the reason, for skipped blocks


def parse(text):
  """The fenced code blocks of a Markdown text, with their skip reasons."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    match = FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    start, language = i, match.group("lang")
    i += 1
    body = []
    while i < len(lines) and lines[i].rstrip() != "```":
      body.append(lines[i])
      i += 1
    if i == len(lines):
      raise ValueError(f"line {start + 1}: code block never closed.")
    previous = lines[start - 1] if start else ""
    skip = SKIP.search(previous)
    if "docs-check" in previous and not skip:
      raise ValueError(f"line {start}: a docs-check marker needs a reason: "
                       "<!-- docs-check: skip: REASON -->")
    blocks.append(Block(language, "\n".join(body) + "\n", start + 1,
                        skip.group("reason") if skip else None))
    i += 1
  return blocks


def substitute(blocks):
  """Blocks to run, with SUBSTITUTIONS applied; raises if one does not apply once."""
  runnable = [b for b in blocks if b.language in RUN_LANGUAGES and not b.skip]
  for old, new in SUBSTITUTIONS:
    places = [b for b in runnable if old in b.code]
    count = sum(b.code.count(old) for b in places)
    if count != 1:
      raise ValueError(f"Substitution {old!r} occurs {count} times in the README's "
                       "examples, not once: update SUBSTITUTIONS in tests/docs_check.py.")
    places[0].code = places[0].code.replace(old, new)
  return runnable


def shell_prelude():
  python = sys.executable
  return (f'function dpc {{ "{python}" -m dpc_tf.cli "$@"; }}\n'
          f'function dpc-export {{ "{python}" -m export "$@"; }}\n'
          f'function dpc-train {{ "{python}" -m train "$@" {TRAIN_OVERRIDES}; }}\n')


def run_block(block, namespace, workdir):
  if block.language == "python":
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)  # pylint: disable=exec-used
    return
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(["bash", "-euo", "pipefail", "-c",
                           shell_prelude() + "set -x\n" + block.code],
                          cwd=workdir, env=env, check=False)
  if result.returncode:
    raise RuntimeError(f"exit code {result.returncode}")


def main(readme, workdir):
  with open(readme) as f:
    blocks = substitute(parse(f.read()))
  namespace = {"__name__": "__readme__"}
  os.chdir(workdir)
  for block in blocks:
    start = time.time()
    print(f"== README.md:{block.line} ({block.language})", flush=True)
    try:
      run_block(block, namespace, workdir)
    except Exception as e:  # Any failure of an example fails the check.
      print(f"FAILED README.md:{block.line} ({block.language}): "
            f"{type(e).__name__}: {e}\n{block.code}", flush=True)
      raise
    print(f"== README.md:{block.line} done in {time.time() - start:.1f} s", flush=True)
  print(f"All {len(blocks)} examples ran.")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  sys.exit(main(os.path.abspath(sys.argv[1]), sys.argv[2]))
