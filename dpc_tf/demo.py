"""The main job on an embedded default: train, save, compress, decompress, measure.

    python -m dpc_tf.demo --workdir demo_out     (what `make demo` runs)

Trains a small hyperprior codec for a short while on photos that scikit-image
ships, saves it, then compresses and decompresses a held-out photo through
real files with the `dpc` command and prints bits per pixel, PSNR and MS-SSIM
next to those of a flat gray image, so the numbers can be judged at a glance.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

# Photos bundled with scikit-image: training set, and the held-out test photo.
TRAIN_PHOTOS = ("coffee", "chelsea", "rocket", "hubble_deep_field",
                "immunohistochemistry", "retina", "colorwheel", "logo")
TEST_PHOTO = "astronaut"


def skimage_photo(name):
  from skimage import data
  image = getattr(data, name)()
  if image.ndim == 2:
    image = np.stack([image] * 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def write_photos(directory):
  from dpc_tf import images
  os.makedirs(directory, exist_ok=True)
  for name in TRAIN_PHOTOS:
    path = os.path.join(directory, f"{name}.png")
    if not os.path.exists(path):
      images.write_image(path, skimage_photo(name))
  return directory


def run(command):
  print("$", " ".join(command), flush=True)
  subprocess.run(command, check=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="demo_out")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--lmbda", type=float, default=0.004)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  start = time.time()
  photos = write_photos(os.path.join(args.workdir, "photos"))
  model_dir = os.path.join(args.workdir, "model")

  import tensorflow as tf
  import dpc_tf
  from dpc_tf import images, metrics
  print(f"Training a hyperprior codec for {args.steps} steps on "
        f"{len(TRAIN_PHOTOS)} scikit-image photos ...", flush=True)
  tf.keras.utils.set_random_seed(0)
  files = sorted(os.path.join(photos, f) for f in os.listdir(photos))
  crops = tf.data.Dataset.from_tensor_slices(files)
  def load(path):
    image = tf.image.decode_png(tf.io.read_file(path), channels=3)
    return tf.image.random_crop(image, (128, 128, 3))
  data = (crops.repeat().shuffle(64, seed=0).map(load)
          .map(lambda x: tf.cast(x, tf.float32) / 255.0).batch(8).prefetch(2))
  model = dpc_tf.create_model("hyperprior", num_filters=64)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), distortion="mse",
                lmbda=args.lmbda)
  model.fit(data, steps_per_epoch=args.steps // 4, epochs=4, verbose=2)
  dpc_tf.save_model(model, model_dir, overwrite=True)

  test_png = os.path.join(args.workdir, f"{TEST_PHOTO}.png")
  images.write_image(test_png, skimage_photo(TEST_PHOTO), overwrite=True)
  coded = os.path.join(args.workdir, f"{TEST_PHOTO}.dpc")
  decoded = os.path.join(args.workdir, f"{TEST_PHOTO}.decoded.png")
  dpc = [sys.executable, "-m", "dpc_tf.cli"]
  run(dpc + ["compress", "-m", model_dir, test_png, "-o", coded, "--force"])
  run(dpc + ["decompress", "-m", model_dir, coded, "-o", decoded, "--force"])

  original = images.read_image(test_png)
  result = images.read_image(decoded)
  gray = np.full_like(original, int(original.mean()))
  bpp = metrics.bpp(os.path.getsize(coded), original)
  ms = metrics.msssim(original, result)
  print(f"\n{TEST_PHOTO} ({original.shape[1]}x{original.shape[0]}), held out "
        "from training:")
  print(f"  dpc hyperprior: {bpp:.3f} bpp (of 24 uncompressed), "
        f"PSNR {metrics.psnr(original, result):.2f} dB, MS-SSIM {ms:.4f} "
        f"({metrics.msssim_db(ms):.2f} dB)")
  print(f"  flat gray image: PSNR {metrics.psnr(original, gray):.2f} dB, "
        f"MS-SSIM {metrics.msssim(original, gray):.4f}")
  print(f"Files in {args.workdir}/; done in {time.time() - start:.0f} s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
