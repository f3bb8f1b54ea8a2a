"""The decoder as the network sees it: bombs, a crafted hang, fuzzing.

The model has realistic magnitudes (seeded, scaled weights: large symbols,
non-zero hyper-latents, escapes), so damaged strings reach every path of the
range decoder.
"""

import time

import numpy as np
import pytest
from PIL import Image

import dpc_tf
from dpc_tf import cli, container, fuzzing, isolation

# A legitimate decode here takes well under a second; a hung one never ends.
BUDGET_SECONDS = 8.0


@pytest.fixture(scope="module")
def model():
  return fuzzing.scaled_model("hyperprior", seed=0)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
  path = tmp_path_factory.mktemp("safety") / "model"
  dpc_tf.save_model(model, path)
  return path


@pytest.fixture(scope="module")
def encoded(model):
  from skimage import data
  image = np.ascontiguousarray(data.astronaut()[100:148, 150:214])  # 48x64
  return image, dpc_tf.Codec(model).encode(image)


@pytest.fixture(scope="module")
def hang(model, encoded):
  """The real stream with its z string replaced by a 2-byte escape-edge string."""
  _, data = encoded
  stream = container.unpack(data)
  return container.pack(container.Bitstream(
      stream.header, (fuzzing.escape_edge_string(model),) + stream.strings[1:]))


@pytest.fixture(scope="module")
def decoder(model_dir):
  # spare: a killed worker is replaced at once, not after TensorFlow's import.
  with isolation.DecoderProcess(model_dir, base_seconds=BUDGET_SECONDS,
                                seconds_per_megapixel=0, spare=True) as d:
    yield d


def with_size(data, height, width):
  stream = container.unpack(data)
  h = stream.header
  header = container.Header(h.architecture, h.config_hash, h.fingerprint,
                            height, width, h.channels)
  return container.pack(container.Bitstream(header, stream.strings, stream.alpha))


def test_the_model_has_realistic_magnitudes(model, encoded):
  image, _ = encoded
  latents = model.image_latents(image).numpy()
  assert np.abs(latents).max() >= 5 and np.abs(latents).mean() > 1
  import tensorflow as tf
  z = tf.round(model.hyper_analysis_transform(model.analysis_transform(
      model._pad(tf.convert_to_tensor(image)))))
  assert np.mean(z.numpy() != 0) > 0.3


def test_pixel_limit_is_pillows_and_can_be_raised(model, encoded):
  assert container.DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
  image, data = encoded
  codec = dpc_tf.Codec(model)
  # The bomb: a real stream whose header says 2^20 x 512 pixels.
  bomb = with_size(data, 1 << 20, 512)
  start = time.perf_counter()
  with pytest.raises(container.ImageTooLargeError, match="--max-pixels"):
    codec.decode(bomb)
  # Without the limit, the strings are too short for that size: refused before
  # anything is allocated.
  with pytest.raises(container.BitstreamError, match="'z' has .* needs at least"):
    codec.decode(bomb, max_pixels=None)
  assert time.perf_counter() - start < 5
  # The limit is the caller's to set, exactly.
  pixels = image.shape[0] * image.shape[1]
  assert codec.decode(data, max_pixels=pixels).shape == image.shape
  with pytest.raises(container.ImageTooLargeError):
    codec.decode(data, max_pixels=pixels - 1)


def test_string_bound_holds_for_real_streams_of_every_architecture(tiny_models):
  """The lower bound never refuses what the encoder writes: a flat image
  (the cheapest content) at several sizes, and a noisy one."""
  rng = np.random.default_rng(0)
  for name in ("factorized", "hyperprior", "channelwise"):
    model = tiny_models[name]
    codec = dpc_tf.Codec(model)
    for image in (np.full((128, 192, 3), 128, np.uint8),
                  rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)):
      stream = container.unpack(codec.encode(image))
      bounds = model.min_string_bytes(image.shape[:2])
      assert all(len(s) >= b for s, b in zip(stream.strings, bounds))
    # And it grows with the declared size, so a bomb header needs long strings.
    assert sum(model.min_string_bytes((1 << 15, 1 << 14))) > 10_000


def test_crafted_escape_string_is_stopped_by_the_decoder_process(
    decoder, encoded, hang, tmp_path, model_dir, capsys):
  """tfc's Elias-gamma loop never ends on this stream (2-byte z string, valid
  CRC, real header); the worker is killed at its budget and replaced."""
  image, data = encoded
  assert decoder.decode(data).shape == image.shape
  start = time.perf_counter()
  with pytest.raises(isolation.DecodeTimeoutError, match="crafted to hang"):
    decoder.decode(hang)
  assert BUDGET_SECONDS <= time.perf_counter() - start < BUDGET_SECONDS + 5
  assert decoder.restarts == 1
  # The next file is decoded by a fresh worker, bit for bit as in-process.
  np.testing.assert_array_equal(decoder.decode(data),
                                dpc_tf.load_codec(model_dir).decode(data))

  # `dpc decompress` decodes in a worker by default: the hung file is reported,
  # the others are still done.
  (tmp_path / "good.dpc").write_bytes(data)
  (tmp_path / "hang.dpc").write_bytes(hang)
  code = cli.main(["decompress", "-m", str(model_dir), str(tmp_path / "hang.dpc"),
                   str(tmp_path / "good.dpc"), "--out-dir", str(tmp_path / "out"),
                   "--timeout", str(BUDGET_SECONDS)])
  err = capsys.readouterr().err
  assert code == 1
  assert "hang.dpc: Decoding did not finish within its budget" in err
  assert "1 of 2 files done, 1 failed" in err
  assert (tmp_path / "out" / "good.decoded.png").exists()
  assert not (tmp_path / "out" / "hang.decoded.png").exists()


def test_fuzzed_streams_are_refused_or_decoded_to_the_declared_size(
    decoder, encoded, model_dir):
  """200 seeded damaged streams (bit flips, truncations, insertions, header
  fields, string bodies; checksums broken and recomputed): each one is a
  BitstreamError or an image of the declared size; no other exception, no
  crash, and no hang (the decoder process turns one into an error)."""
  _, data = encoded
  codec = dpc_tf.load_codec(model_dir, isolate=decoder)  # Codec's option.
  max_pixels = 1 << 20  # What a server would set: bounds time and memory.
  # The escape-edge string has its own test above: each one costs a budget.
  result = fuzzing.fuzz(lambda d: codec.decode(d, max_pixels=max_pixels), data,
                        inputs=200, seed=13)
  assert not result["failures"], result["failures"][:3]
  assert result["decoded"] + sum(result["rejected"].values()) == 200
  # Both outcomes happen, and the damage reached the range decoder.
  assert result["decoded"] >= 20
  assert result["rejected"]["BitstreamError"] >= 50
  assert {"bit_flips+crc", "string_body", "size", "truncation"} <= set(result["by_kind"])
