"""Reading images: modes we take, and clear errors for the others."""

import numpy as np
import pytest
from PIL import Image

from dpc_tf import images


@pytest.mark.parametrize("mode, channels", [
    ("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2), ("1", 1), ("CMYK", 3)])
def test_modes_read_as_8_bit(tmp_path, mode, channels):
  path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
  Image.new(mode, (7, 5)).save(path)
  image = images.read_image(path)
  assert image.shape == (5, 7, channels) and image.dtype == np.uint8


def test_palette_keeps_transparency(tmp_path):
  im = Image.new("P", (4, 4))
  im.info["transparency"] = 0
  im.save(tmp_path / "p.png", transparency=0)
  assert images.read_image(tmp_path / "p.png").shape == (4, 4, 4)
  Image.new("P", (4, 4)).save(tmp_path / "q.png")
  assert images.read_image(tmp_path / "q.png").shape == (4, 4, 3)


def test_alpha_policy_is_explicit(tmp_path):
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[..., :3] = 100
  rgba[..., 3] = [[255, 255, 255], [255, 0, 51]]
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
  Image.fromarray(rgba[..., 0], "L").save(tmp_path / "l.png")
  path = str(tmp_path / "a.png")
  np.testing.assert_array_equal(images.read_image(path), rgba)  # "keep"
  np.testing.assert_array_equal(images.read_image(path, alpha="drop"), rgba[..., :3])
  notes = []
  composited = images.read_image(path, alpha="composite", notes=notes)
  # Over white: 100 * a + 255 * (1 - a), rounded.
  np.testing.assert_array_equal(composited[1, :, 0], [100, 255, 224])
  np.testing.assert_array_equal(composited[0], rgba[0, :, :3])
  assert notes == [f"{path}: has transparent pixels; composited over white."]
  for name in ("la.png", "l.png"):
    for alpha in ("composite", "drop"):
      assert images.read_image(tmp_path / name, alpha=alpha).shape == (2, 3, 3)
  assert images.read_image(tmp_path / "la.png").shape == (2, 3, 2)
  with pytest.raises(ValueError, match="alpha must be one of"):
    images.read_image(path, alpha="white")


@pytest.mark.parametrize("mode, match", [("I;16", "16-bit"), ("F", "floating")])
def test_deep_images_are_refused(tmp_path, mode, match):
  path = tmp_path / "deep.tif"
  Image.new(mode, (4, 4)).save(path)
  with pytest.raises(images.ImageError, match=match):
    images.read_image(path)


def test_16_bit_rgb_png_is_refused_not_truncated(tmp_path):
  import struct
  import zlib

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))

  # A 2x2 16-bit RGB PNG, written by hand: Pillow cannot write one.
  rows = b"".join(b"\0" + b"\x12\x34" * 6 for _ in range(2))
  png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
  (tmp_path / "deep.png").write_bytes(png)
  with pytest.raises(images.ImageError, match="16-bit"):
    images.read_image(tmp_path / "deep.png")


def test_missing_and_broken_files(tmp_path):
  with pytest.raises(images.ImageError, match="no such file"):
    images.read_image(tmp_path / "nope.png")
  (tmp_path / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
  with pytest.raises(images.ImageError, match="not a readable image"):
    images.read_image(tmp_path / "half.png")


def test_writes_are_atomic_and_never_overwrite_silently(tmp_path):
  path = tmp_path / "out.png"
  images.write_image(path, np.zeros((3, 3, 3), np.uint8))
  with pytest.raises(FileExistsError):
    images.write_image(path, np.ones((3, 3, 3), np.uint8))

  def crash(f):
    f.write(b"partial")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    images.write_atomic(tmp_path / "other.bin", crash)
  assert not (tmp_path / "other.bin").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
