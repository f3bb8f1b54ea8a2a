"""The .dpc container and Codec: colour modes, corruption, wrong models, processes."""

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import dpc_tf
from dpc_tf import container


@pytest.fixture(scope="module")
def codec(tiny_models):
  return dpc_tf.Codec(tiny_models["hyperprior"])


@pytest.fixture(scope="module")
def encoded(codec):
  from skimage import data
  image = np.ascontiguousarray(data.coffee()[:40, :56])
  return image, codec.encode(image)


def test_gray_and_alpha_are_documented_and_kept(codec):
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)
  out = codec.decode(codec.encode(gray))
  assert out.shape == (20, 30, 1)
  rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
  out = codec.decode(codec.encode(rgba))
  assert out.shape == (20, 30, 4)
  np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # Alpha is lossless.
  gray_alpha = rng.integers(0, 256, (9, 7, 2), dtype=np.uint8)
  out = codec.decode(codec.encode(gray_alpha))
  assert out.shape == (9, 7, 2)
  np.testing.assert_array_equal(out[..., 1], gray_alpha[..., 1])
  # A 2-D array is a gray image too.
  assert codec.decode(codec.encode(gray[..., 0])).shape == (20, 30, 1)


@pytest.mark.parametrize("image, match", [
    (np.zeros((4, 4, 3), np.uint16), "uint8"),
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 5), np.uint8), "1-4 channels"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
])
def test_unsupported_images_are_clear_errors(codec, image, match):
  with pytest.raises(dpc_tf.ImageError, match=match):
    codec.encode(image)


def test_header_describes_the_image_and_model(codec, encoded):
  image, data = encoded
  stream = container.unpack(data)
  assert (stream.header.height, stream.header.width, stream.header.channels) == (40, 56, 3)
  assert stream.header.architecture == "hyperprior"
  assert stream.header.fingerprint == codec.fingerprint
  assert len(stream.strings) == 2
  # The container costs little beyond the entropy-coded strings.
  assert len(data) - sum(map(len, stream.strings)) < 50


@pytest.mark.parametrize("cut", [0, 3, 5, 12, 30, -5, -1])
def test_truncated_streams_are_detected(codec, encoded, cut):
  _, data = encoded
  with pytest.raises(container.BitstreamError):
    codec.decode(data[:cut])


def test_every_single_bit_flip_is_detected(codec, encoded):
  _, data = encoded
  for position in range(len(data)):
    for bit in (0, 5):
      damaged = bytearray(data)
      damaged[position] ^= 1 << bit
      with pytest.raises(container.BitstreamError):
        codec.decode(bytes(damaged))


def test_foreign_files_and_versions(codec, encoded):
  _, data = encoded
  with pytest.raises(container.BitstreamError, match="magic"):
    codec.decode(b"\x89PNG\r\n\x1a\n" + data[8:])
  with pytest.raises(container.BitstreamError, match="magic"):
    codec.decode(b"")
  newer = bytearray(data)
  newer[4] = 3
  with pytest.raises(container.BitstreamError, match="version 3.*upgrade"):
    codec.decode(bytes(newer))


def _as_version_1(data):
  """A format-2 stream of a fixed-rate model rewritten as format 1 (no quality)."""
  import struct
  import zlib
  name_len = data[5]
  quality_at = 6 + name_len + 4 + 8 + 9
  assert struct.unpack(">f", data[quality_at:quality_at + 4]) == (0.0,)
  body = bytearray(data[:quality_at] + data[quality_at + 4:-4])
  body[4] = 1
  return bytes(body) + struct.pack(">I", zlib.crc32(body))


def test_format_1_files_still_decode(codec, encoded):
  image, data = encoded
  old = _as_version_1(data)
  assert container.unpack(old).header.quality == 0.0
  np.testing.assert_array_equal(codec.decode(old), codec.decode(data))


def test_stream_from_another_model_is_refused(tiny_models, encoded):
  _, data = encoded
  with pytest.raises(container.ModelMismatchError, match="made by model hyperprior/"):
    dpc_tf.Codec(tiny_models["mean_scale_hyperprior"]).decode(data)
  # Same architecture and config, different weights: also refused.
  other = dpc_tf.create_model("hyperprior", num_filters=8)
  other.update()
  with pytest.raises(container.ModelMismatchError):
    dpc_tf.Codec(other).decode(data)


def test_valid_crc_over_garbage_strings_is_an_error_not_a_crash(codec, encoded):
  """A forged stream with a correct checksum: garbage after each string's
  symbols is left unread, which tfc's end-of-string check always catches."""
  _, data = encoded
  stream = container.unpack(data)
  forged = container.Bitstream(stream.header,
                               tuple(s + b"\xa5" * 64 for s in stream.strings))
  with pytest.raises(container.BitstreamError, match="range decoding failed"):
    codec.decode(container.pack(forged))


def test_decoding_in_another_process_is_bit_exact(saved_models, tmp_path):
  codec = dpc_tf.load_codec(saved_models["channelwise"])
  from skimage import data
  image = np.ascontiguousarray(data.chelsea()[:50, :70])
  stream = codec.encode(image)
  (tmp_path / "in.dpc").write_bytes(stream)
  script = (
      "import sys, numpy as np, dpc_tf\n"
      "codec = dpc_tf.load_codec(sys.argv[1])\n"
      "data = open(sys.argv[2], 'rb').read()\n"
      "np.save(sys.argv[3], codec.decode(data))\n"
      "open(sys.argv[4], 'wb').write(codec.encode(np.load(sys.argv[5])))\n")
  np.save(tmp_path / "image.npy", image)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  subprocess.run([sys.executable, "-c", script, str(saved_models["channelwise"]),
                  str(tmp_path / "in.dpc"), str(tmp_path / "out.npy"),
                  str(tmp_path / "again.dpc"), str(tmp_path / "image.npy")],
                 check=True, env=env, timeout=300)
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), codec.decode(stream))
  assert (tmp_path / "again.dpc").read_bytes() == stream


def test_varint_lengths_round_trip():
  header = container.Header("x", b"abcd", b"01234567", 3, 4, 4)
  strings = (b"", b"a" * 127, b"b" * 128, b"c" * 70000)
  stream = container.Bitstream(header, strings, zlib.compress(b"\x00" * 12))
  assert container.unpack(container.pack(stream)) == stream


def test_tiled_decoding_gives_the_whole_decodes_pixels(tiny_models):
  """Synthesis in tiles (what bounds a large image's memory) against the whole
  transform, for every registered architecture, with tiles of 2 and 3
  latents forced so that a small image has dozens of them. (Variable rate:
  tests/test_variable_rate.py.)"""
  from skimage import data
  image = np.ascontiguousarray(data.astronaut()[:150, :230])  # 5 x 8 tiles of 32
  for name in dpc_tf.available_models():
    codec = dpc_tf.Codec(tiny_models[name])
    data = codec.encode(image)
    whole = codec.decode(data, tile=0)
    for tile in (32, 48):
      tiled = codec.decode(data, tile=tile)
      assert tiled.shape == whole.shape, name
      # Exactly, as a margin of 2 latents covers the transform's reach (within
      # one level allows for float rounding of another convolution algorithm).
      difference = np.abs(tiled.astype(int) - whole)
      assert difference.max() <= 1, (name, tile)
      assert np.mean(difference == 0) > 0.999, (name, tile)
  # Large images are tiled by default: make this one large for the model.
  model = tiny_models["hyperprior"]
  codec = dpc_tf.Codec(model)
  data = codec.encode(image[..., :1])  # Gray: the channel modes still apply.
  calls = []
  original = model._synthesize_tiled
  model._synthesize_tiled = lambda *args: calls.append(args[-1]) or original(*args)
  try:
    model.tile_above_pixels = 150 * 230
    assert codec.decode(data).shape == (150, 230, 1) and calls == [model.tile_size]
    model.tile_above_pixels = 1 << 30
    codec.decode(data)
    assert calls == [model.tile_size]
  finally:
    del model._synthesize_tiled, model.tile_above_pixels
  with pytest.raises(ValueError, match="multiple of 16"):
    codec.decode(data, tile=40)


def test_load_codec_sits_between_codec_and_serving():
  """`load_codec` chooses between `Codec` and `serving.SavedModelCodec`, which
  subclasses `Codec`: in its own module, so neither imports the other's user."""
  import ast
  import dpc_tf.loading

  def imported(module):
    with open(os.path.join(os.path.dirname(dpc_tf.__file__), f"{module}.py")) as f:
      tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "dpc_tf":
        names.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        names.add(node.module.split(".")[-1])
    return names

  assert not {"serving", "loading"} & imported("codec")
  assert "loading" not in imported("serving")
  assert {"codec", "serving"} <= imported("loading")
  assert dpc_tf.load_codec is dpc_tf.loading.load_codec
