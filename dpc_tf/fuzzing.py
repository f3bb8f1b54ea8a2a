"""Damaged and crafted bitstreams, for testing decoders (the suite's fuzz test
and `bench/fuzz_decoder.py`).

    model = fuzzing.scaled_model("hyperprior", seed=0)   # realistic magnitudes
    counts = fuzzing.fuzz(decoder.decode, data, inputs=200, seed=0)

Every input must be refused with a `BitstreamError` or decode to an image of
the size its (possibly altered) header declares; anything else — another
exception, a wrong shape — is a failure, and a hang is what the caller's
decoder must turn into an error (`isolation.DecoderProcess`).
"""

import collections
import random
import struct
import zlib

import numpy as np

from dpc_tf import container

# Scale of the last layer of the analysis and hyper-analysis transforms: an
# untrained model's latents all round to 0 or ±1 and its hyper-latents to 0;
# scaled, |y| averages ~2 with values past ±20 and most of z is non-zero, as
# in a trained model, so streams have large symbols and escapes (the range
# coder's overflow path).
LATENT_SCALE = 10.0
HYPER_LATENT_SCALE = 3.0


def scaled_model(architecture="hyperprior", seed=0, **hparams):
  """A seeded, frozen model (8 filters by default) with realistic magnitudes."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import dpc_tf  # pylint: disable=import-outside-toplevel
  tf.keras.utils.set_random_seed(seed)
  hparams.setdefault("num_filters", 8)
  model = dpc_tf.create_model(architecture, **hparams)
  for transform, scale in ((model.analysis_transform, LATENT_SCALE),
                           (getattr(model, "hyper_analysis_transform", None),
                            HYPER_LATENT_SCALE)):
    if transform is None:
      continue
    # The last convolution: kernels (RDFT parameters, linear in the kernel)
    # and bias scale its output.
    def layer(variable):  # "analysis/conv_3/kernel_real:0" -> "conv_3"
      parts = variable.name.split("/")
      return parts[1] if parts[0] == transform.name else parts[0]

    last = sorted({layer(v) for v in transform.trainable_variables})[-1]
    for variable in transform.trainable_variables:
      if layer(variable) == last:
        variable.assign(variable * scale)
  model.update()
  return model


def escape_edge_string(model):
  """A 2-4 byte string that hangs tfc's range decoder (see `dpc_tf.isolation`).

  It puts the decoder's value exactly on the lower edge of the escape
  interval of the first symbol of the model's first string (coded with the
  first CDF of a batched table: z, or y of `factorized`), with nothing but
  (implicit) zeros after it, so the Elias-gamma loop reads 0 forever.
  """
  table = model._frozen[model._string_symbols(64, 64)[0][0]]  # pylint: disable=protected-access
  cdf = table.cdf.numpy()
  precision = abs(int(cdf[0]))
  end = 1
  while cdf[end] != 1 << precision:
    end += 1
  escape_start = int(cdf[end - 1])  # The escape symbol is the last interval.
  value = escape_start << (32 - precision)
  return value.to_bytes(4, "big").rstrip(b"\0")


def with_crc(body):
  """body (everything before the checksum) + its CRC-32."""
  return body + struct.pack(">I", zlib.crc32(body))


def _flip_bits(data, rng):
  out = bytearray(data)
  for _ in range(rng.randint(1, 8)):
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
  return bytes(out)


def _truncate(data, rng):
  return data[:rng.randrange(len(data))]


def _insert(data, rng):
  at = rng.randrange(len(data) + 1)
  return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def _header_bytes(data, rng):
  # The first 40 bytes are the fixed header (magic, version, name, ids, size).
  out = bytearray(data)
  for _ in range(rng.randint(1, 3)):
    out[rng.randrange(min(40, len(out)))] = rng.randrange(256)
  return bytes(out)


_RAW = {"bit_flips": _flip_bits, "truncation": _truncate, "insertion": _insert,
        "header_bytes": _header_bytes}


def _edit_fields(stream, rng):
  """A header or a string changed through the container (valid CRC)."""
  h = stream.header
  strings = list(stream.strings)
  kind = rng.choice(["size", "channels", "string_body", "string_length",
                     "string_swap", "string_zeros"])
  if kind == "size":
    values = [0, 1, 2, 63, 65, h.height * 2, h.width + 1, 4096, 1 << 16,
              1 << 20, (1 << 32) - 1, rng.randrange(1, 4096)]
    h = container.Header(h.architecture, h.config_hash, h.fingerprint,
                         rng.choice(values), rng.choice(values + [h.width]),
                         h.channels)
  elif kind == "channels":
    h = container.Header(h.architecture, h.config_hash, h.fingerprint,
                         h.height, h.width, rng.choice([1, 2, 3, 4]))
  else:
    i = rng.randrange(len(strings))
    s = bytearray(strings[i])
    if kind == "string_body" and s:
      for _ in range(rng.randint(1, 30)):
        s[rng.randrange(len(s))] = rng.randrange(256)
    elif kind == "string_length":
      s = s[:rng.randrange(len(s) + 1)] if rng.random() < 0.5 else (
          s + rng.randbytes(rng.randint(1, 64)))
    elif kind == "string_swap" and len(strings) > 1:
      j = (i + 1) % len(strings)
      strings[j], s = bytes(s), bytearray(strings[j])
    elif kind == "string_zeros":
      s = bytearray(len(s))
    strings[i] = bytes(s)
  return kind, container.Bitstream(h, tuple(strings), stream.alpha)


def mutations(data, seed=0, escape_edge=None, escape_edge_rate=0.01):
  """An endless seeded stream of (kind, damaged bytes) from a valid bitstream.

  Half are raw byte damage (bit flips, truncation, insertions, header bytes),
  with the checksum left alone or recomputed; half alter fields through the
  container (size, channels, string bodies and lengths), so the checksum is
  valid and the strings reach the range decoder. `escape_edge`: a string from
  `escape_edge_string`, put in place of the first string in a fraction
  `escape_edge_rate` of the inputs (each one hangs an unprotected decoder).
  """
  rng = random.Random(seed)
  stream = container.unpack(data)
  while True:
    if escape_edge is not None and rng.random() < escape_edge_rate:
      yield "escape_edge", container.pack(container.Bitstream(
          stream.header, (escape_edge,) + stream.strings[1:], stream.alpha))
    elif rng.random() < 0.5:
      kind = rng.choice(sorted(_RAW))
      damaged = _RAW[kind](data, rng)
      if rng.random() < 0.5 and len(damaged) > 4:
        kind += "+crc"
        damaged = with_crc(damaged[:-4])
      yield kind, damaged
    else:
      kind, edited = _edit_fields(stream, rng)
      yield kind, container.pack(edited)


def declared_shape(data, max_pixels=None):
  """(height, width, channels) the header declares, or None if unreadable."""
  try:
    h = container.unpack(data, max_pixels).header
  except container.BitstreamError:
    return None
  return (h.height, h.width, h.channels)


def fuzz(decode, data, inputs, seed=0, escape_edge=None, escape_edge_rate=0.01,
         max_pixels=None, progress=None):
  """Decodes `inputs` damaged versions of `data`; returns the counts.

  `decode(bytes)` must return an image or raise `BitstreamError`. Returns
  {"inputs", "decoded", "rejected": {error class: n}, "by_kind": {kind:
  {outcome: n}}, "failures": [(kind, outcome, message, bytes)], "timeouts":
  [(kind, bytes)]}; a failure is any other exception or an image of another
  shape than the header declares.
  """
  rejected = collections.Counter()
  by_kind = collections.defaultdict(collections.Counter)
  failures, timeouts = [], []
  decoded = 0
  source = mutations(data, seed, escape_edge, escape_edge_rate)
  done = 0
  for done in range(1, inputs + 1):
    kind, damaged = next(source)
    try:
      image = decode(damaged)
    except KeyboardInterrupt:  # Stop early: count what was run.
      done -= 1
      break
    except container.BitstreamError as e:
      rejected[type(e).__name__] += 1
      by_kind[kind][type(e).__name__] += 1
      if type(e).__name__ == "DecodeTimeoutError":
        timeouts.append((kind, damaged))
    except Exception as e:  # pylint: disable=broad-except  # Counted, reported.
      by_kind[kind]["failure"] += 1
      failures.append((kind, type(e).__name__, str(e)[:500], damaged))
    else:
      shape = declared_shape(damaged, max_pixels)
      if not isinstance(image, np.ndarray) or image.shape != shape or (
          image.dtype != np.uint8):
        by_kind[kind]["failure"] += 1
        failures.append((kind, "wrong image",
                         f"{getattr(image, 'shape', image)} for a header of {shape}",
                         damaged))
      else:
        decoded += 1
        by_kind[kind]["decoded"] += 1
    if progress is not None:
      progress.update(1)
      if progress.n % 500 == 0:
        progress.set_postfix(decoded=decoded, refused=sum(rejected.values()),
                             timeouts=rejected["DecodeTimeoutError"],
                             failures=len(failures), refresh=False)
  return {"inputs": done, "decoded": decoded, "rejected": dict(rejected),
          "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
          "failures": failures, "timeouts": timeouts}
