"""Helpers several test modules share: child processes, a TFDS builder module."""

import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_python(args, env=None, log=None):
  """Starts `python args...` in the checkout, in its own process group.

  Own group: a tf.distribute worker whose peer is gone waits forever and
  TensorFlow catches SIGTERM, so the only sure stop is SIGKILL to the group.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.Popen([sys.executable] + list(args), cwd=REPO, env=env,
                          stdout=log or subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)


def kill(process):
  """SIGKILLs the process group of `process` and reaps it."""
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait()


def finish(process, timeout):
  """Waits for `process`; fails the test (after SIGKILL) on timeout.

  Returns (exit code, output).
  """
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    kill(process)
    pytest.fail(f"{' '.join(map(str, process.args[:4]))} did not finish in "
                f"{timeout} s.")
  return process.returncode, output


def manual_photos_builder(class_name):
  """Source of a TFDS builder module, as a user's own dataset would be: class
  `class_name` reads manual_dir/{train,validation}/*.png (no download)."""
  return f'''
import tensorflow_datasets as tfds


class {class_name}(tfds.core.GeneratorBasedBuilder):
  """PNG photos from the manual directory, as CLIC's files would be."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put train/*.png and validation/*.png there."

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {{"image": tfds.features.Image(shape=(None, None, 3))}}))

  def _split_generators(self, dl_manager):
    return {{split: self._generate_examples(dl_manager.manual_dir / split)
            for split in ("train", "validation")}}

  def _generate_examples(self, folder):
    for path in sorted(folder.glob("*.png")):
      yield path.name, {{"image": str(path)}}
'''
