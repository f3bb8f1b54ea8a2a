"""Writes the LPIPS parity fixtures tests/data/lpips_reference_<trunk>.npz.

Runs the real PyTorch reference (lpips 0.1.4 with torch/torchvision) on
random and real images, with seeded trunk weights
(`perceptual.testing.seeded_trunk_state_dict`, which tests/test_lpips.py
rebuilds without PyTorch) and the lin weights shipped in `lpips`. Each
fixture holds the inputs (uint8), the reference's lin weights (so the plain
test suite needs no `lpips`), a digest of the seeded trunk weights (so a
changed generator is told apart from a wrong port), and the reference's
outputs: distances and spatial maps, calibrated (LPIPS) and uncalibrated.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install \
        -c requirements/constraints.txt tensorflow==2.14.1 scikit-image \
        torch==2.14.1 torchvision==0.29.1 lpips==0.1.4 && \
        /tmp/ref/bin/pip install --no-deps -e .
    /tmp/ref/bin/python tests/reference/make_lpips_reference.py

Image sizes: 64x64, and 66x100, where SqueezeNet's ceil-mode pooling and
VGG's floor-mode pooling both drop or keep a partial window.
"""

import argparse
import json
import pathlib

import numpy as np

from perceptual import testing
from perceptual import trunks as trunks_lib

SEED = 0
DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def fixture_path(trunk, directory=DATA):
  return pathlib.Path(directory) / f"lpips_reference_{trunk}.npz"


def _photo(name, height, width, offset=(0, 0)):
  """A real photo from scikit-image, downscaled and cropped, as uint8."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  import skimage.transform  # pylint: disable=import-outside-toplevel
  image = getattr(skimage.data, name)()[..., :3]
  scale = 2.0 * max(height / image.shape[0], width / image.shape[1])
  small = skimage.transform.rescale(image, scale, channel_axis=-1,
                                    anti_aliasing=True)
  top = (small.shape[0] - height) // 2 + offset[0]
  left = (small.shape[1] - width) // 2 + offset[1]
  crop = small[top:top + height, left:left + width]
  return np.round(crop * 255).astype(np.uint8)


def _noisy(image, sigma, rng):
  noise = rng.normal(0.0, sigma, image.shape)
  return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


def _blurred(image):
  import skimage.filters  # pylint: disable=import-outside-toplevel
  blurred = skimage.filters.gaussian(image / 255.0, sigma=1.5, channel_axis=-1)
  return np.round(blurred * 255).astype(np.uint8)


def make_images(seed=SEED):
  """{case: (x0, x1)} uint8 NHWC batches of random and real image pairs."""
  rng = np.random.default_rng(seed)
  random = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  cases = {}
  h, w = 64, 64
  astronaut, coffee = _photo("astronaut", h, w), _photo("coffee", h, w)
  pairs = [
      (random(h, w), random(h, w)),                       # unrelated noise
      (astronaut, _noisy(astronaut, 8.0, rng)),           # mild noise
      (coffee, _blurred(coffee)),                         # blur
      (_photo("chelsea", h, w), _photo("rocket", h, w)),  # other photo
  ]
  cases["square"] = tuple(np.stack(side) for side in zip(*pairs))
  h, w = 66, 100
  chelsea, rocket = _photo("chelsea", h, w), _photo("rocket", h, w)
  noise = random(h, w)
  pairs = [
      (chelsea, (chelsea // 32) * 32 + 16),               # posterised
      (rocket, _noisy(rocket, 20.0, rng)),                # strong noise
      (noise, np.roll(noise, 1, axis=1)),                 # 1-px shift
  ]
  cases["wide"] = tuple(np.stack(side) for side in zip(*pairs))
  return cases


def make_fixture(trunk, seed=SEED):
  """The fixture arrays of one trunk, computed with the reference."""
  import lpips  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)  # nothing random should remain; belt and braces
  fixture = {
      "seed": np.array(seed),
      "trunk_digest": np.array(testing.state_dict_digest(
          testing.seeded_trunk_state_dict(trunk, seed))),
      "versions": np.array(json.dumps({
          "torch": torch.__version__, "torchvision": torchvision.__version__,
          "lpips": getattr(lpips, "__version__", "0.1.4"),
          "numpy": np.__version__})),
  }
  for name, value in testing.reference_lin_state_dict(trunk).items():
    fixture[f"lin/{name}"] = value
  models = {
      (calibrated, spatial): testing.reference_lpips(
          trunk, seed, calibrated=calibrated, spatial=spatial)
      for calibrated in (True, False) for spatial in (False, True)}
  for case, (x0, x1) in make_images(seed).items():
    fixture[f"x0/{case}"], fixture[f"x1/{case}"] = x0, x1
    f0, f1 = x0.astype(np.float32) / 255, x1.astype(np.float32) / 255
    for (calibrated, spatial), model in models.items():
      kind = ("spatial" if spatial else "distance") + (
          "" if calibrated else "_uncalibrated")
      result = testing.run_reference(model, f0, f1).astype(np.float32)
      fixture[f"{kind}/{case}"] = result[..., 0] if spatial else result
  return fixture


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trunks", nargs="+", default=list(trunks_lib.TRUNKS),
                      choices=list(trunks_lib.TRUNKS))
  parser.add_argument("--output-dir", default=str(DATA))
  args = parser.parse_args(argv)
  pathlib.Path(args.output_dir).mkdir(parents=True, exist_ok=True)
  for trunk in args.trunks:
    fixture = make_fixture(trunk)
    path = fixture_path(trunk, args.output_dir)
    np.savez_compressed(path, **fixture)
    distances = {k: np.round(v, 4).tolist() for k, v in fixture.items()
                 if k.startswith("distance")}
    print(f"{path} ({path.stat().st_size // 1024} KiB): {distances}")


if __name__ == "__main__":
  main()
