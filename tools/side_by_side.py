r"""Side-by-side crops: original / JPEG 4:2:0 / JPEG 2000 / HEVC 4:4:4 / a learned codec.

    python tools/side_by_side.py --kodak ../shared/data/kodak \
        --images kodim23.png:300,160 --model zoo:dpc --quality 3 \
        --out results/side_by_side

Each image is coded whole by the learned codec at --quality; each classical
codec then gets the largest setting whose file is no bigger (bpp at or under
the learned codec's, as in `dpc study`), so no classical crop has more bits.
Writes, for each image, one PNG per codec of the crop (--crop pixels square
at x,y; the centre if not given), a labelled strip of all of them, and
README.md with bpp, PSNR, MS-SSIM and LPIPS of the whole images.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CLASSICAL = ("jpeg420", "jpeg2000", "hevc444")


def parse_image(spec):
  """'kodim23.png' or 'kodim23.png:X,Y' -> (name, (x, y) or None)."""
  name, _, at = spec.partition(":")
  if not at:
    return name, None
  try:
    x, y = (int(v) for v in at.split(","))
  except ValueError:
    raise SystemExit(f"--images: {spec!r}: give NAME or NAME:X,Y (crop corner).") from None
  return name, (x, y)


def crop(image, size, corner):
  height, width = image.shape[:2]
  if size > min(height, width):
    raise SystemExit(f"--crop {size} is larger than the image ({width}×{height}).")
  x, y = corner if corner else ((width - size) // 2, (height - size) // 2)
  if not (0 <= x <= width - size and 0 <= y <= height - size):
    raise SystemExit(f"crop corner {x},{y} puts a {size}-pixel crop outside the "
                     f"{width}×{height} image.")
  return image[y:y + size, x:x + size]


def labelled_strip(crops, labels, gap=6):
  """The crops in a row on white, each with its label underneath."""
  from PIL import Image, ImageDraw
  size = crops[0].shape[0]
  label_height = 18
  strip = Image.new("RGB", (len(crops) * (size + gap) - gap, size + label_height), "white")
  draw = ImageDraw.Draw(strip)
  for i, (pixels, label) in enumerate(zip(crops, labels)):
    x = i * (size + gap)
    strip.paste(Image.fromarray(pixels), (x, 0))
    draw.text((x + 2, size + 3), label, fill="black")
  return strip


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kodak", required=True, help="folder of the images")
  parser.add_argument("--images", default="kodim23.png",
                      help="images separated by ';', each NAME or NAME:X,Y (crop corner)")
  parser.add_argument("--model", default="zoo:dpc")
  parser.add_argument("--quality", type=float, default=None,
                      help="of a variable-rate model (default: its middle)")
  parser.add_argument("--crop", type=int, default=256)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)

  import numpy as np
  from PIL import Image
  from tqdm import tqdm

  import dpc_tf
  from dpc_tf.evaluation import codecs as classical
  from dpc_tf.evaluation.metrics import Metrics
  from dpc_tf.study.codecs import ClassicalStudyCodec, bpp_of

  codec = dpc_tf.load_codec(args.model)
  quality = args.quality
  if quality is None and codec.model.variable_rate:
    quality = codec.model.default_quality
  learned_name = args.model.replace("zoo:", "")
  searchers = [ClassicalStudyCodec(classical.get_codec(name)) for name in CLASSICAL]
  metrics = Metrics(lpips=True)
  os.makedirs(args.out, exist_ok=True)
  lines = [f"# Side-by-side crops at equal rate: `{args.model}` at quality "
           f"{quality:g} and the classical codecs" if quality is not None else
           f"# Side-by-side crops at equal rate: `{args.model}` and the classical codecs",
           "",
           "Made by `python tools/side_by_side.py` (see its docstring). The learned "
           "codec codes each whole image; each classical codec gets its largest "
           "setting at or under that many bits. Figures are for the whole image.",
           ""]
  specs = [parse_image(s) for s in args.images.split(";") if s]
  for name, corner in tqdm(specs, desc="side by side", unit="image"):
    path = os.path.join(args.kodak, name)
    image = dpc_tf.read_image(path, alpha="composite")
    data = codec.encode(image, **({"quality": quality} if quality is not None else {}))
    target = bpp_of(data, image)
    results = [("original", image, None), (learned_name, codec.decode(data), target)]
    for searcher in searchers:
      coded = searcher.code({name: image}, [target])[(name, target)]
      results.insert(-1, (searcher.name, np.asarray(searcher.decode(coded)), coded.bpp))
    stem = os.path.splitext(name)[0]
    crops, labels = [], []
    lines += [f"## {name}", "", f"![{stem}]({stem}_strip.png)", "",
              "| codec | bpp | PSNR dB | MS-SSIM | LPIPS |", "|---|---|---|---|---|"]
    for codec_name, pixels, bpp in results:
      piece = crop(pixels, args.crop, corner)
      Image.fromarray(piece).save(os.path.join(args.out, f"{stem}_{codec_name}.png"))
      crops.append(piece)
      labels.append(codec_name if bpp is None else f"{codec_name} {bpp:.3f} bpp")
      if bpp is not None:
        m = metrics(image, pixels)
        lines.append(f"| {codec_name} | {bpp:.3f} | {m['psnr']:.2f} | {m['msssim']:.4f} "
                     f"| {m['lpips']:.3f} |")
    labelled_strip(crops, labels).save(os.path.join(args.out, f"{stem}_strip.png"))
    lines.append("")
  with open(os.path.join(args.out, "README.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
