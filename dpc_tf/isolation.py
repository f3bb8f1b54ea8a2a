"""Decoding untrusted bitstreams in a worker process, with a time budget.

Why a process: tensorflow-compression's range decoder (the C++ kernel of
`entropy_decode_index`, `OverflowDecode` in range_coder_kernels.cc) reads the
Elias-gamma prefix of an escaped value with

    while (decoder.DecodeLinearly(binary_uniform_cdf, 1) == 0) ++n;

If the decoder's value sits exactly on the lower edge of the escape interval
and the rest of the string is zeros (past its end the decoder reads zeros),
every binary decision is 0 and the loop never ends: a 2-byte string does it
(`tests/test_decoder_safety.py` builds one from the model's own tables), and
random damage to a real string finds it too. The loop runs inside one kernel:
no Python timeout, thread, or TensorFlow cancellation stops it, so anything
that decodes bytes it did not make must be able to end the process. A
`DecoderProcess` keeps a worker with the model loaded, gives each decode a
budget of `base_seconds + seconds_per_megapixel * megapixels` (the declared
size), and on overrun kills the worker (and starts a fresh one) and raises
`DecodeTimeoutError`, a `BitstreamError`.

    with DecoderProcess("runs/hp/model") as decoder:
      image = decoder.decode(open("photo.dpc", "rb").read())

`dpc decompress` decodes this way by default; `dpc_tf.load_codec(path,
isolate=True)` makes `Codec.decode` do it.
"""

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

from dpc_tf import container

# Defaults: a 192-filter model decodes ~5-9 s per megapixel on 2 busy CPU
# cores, so a legitimate image uses a small part of its budget, while a hung
# decoder is stopped within seconds to minutes instead of never.
BASE_SECONDS = 30.0
SECONDS_PER_MEGAPIXEL = 30.0
START_SECONDS = 600.0  # Importing TensorFlow and loading the model.


class DecodeTimeoutError(container.BitstreamError):
  """Decoding exceeded its time budget: the stream is crafted or damaged."""


class DecoderCrashError(RuntimeError):
  """The worker process died while decoding (a bug in a native kernel)."""


class DecoderStartError(RuntimeError):
  """The worker could not load the model (its message says why)."""


_HEADER = struct.Struct(">Q")


def _send(stream, message):
  payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(_HEADER.pack(len(payload)) + payload)
  stream.flush()


def _read_exactly(fd, n, deadline):
  """n bytes from fd, or None at EOF; raises TimeoutError past `deadline`."""
  chunks, remaining = [], n
  while remaining:
    wait = None if deadline is None else deadline - time.monotonic()
    if wait is not None and wait <= 0:
      raise TimeoutError
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
      raise TimeoutError
    chunk = os.read(fd, min(remaining, 1 << 20))
    if not chunk:
      return None
    chunks.append(chunk)
    remaining -= len(chunk)
  return b"".join(chunks)


def _receive(fd, deadline=None):
  header = _read_exactly(fd, _HEADER.size, deadline)
  if header is None:
    return None
  payload = _read_exactly(fd, _HEADER.unpack(header)[0], deadline)
  return None if payload is None else pickle.loads(payload)


class _Worker:
  """One child process: `python -m dpc_tf.isolation MODEL`."""

  def __init__(self, model_path):
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["DPC_DECODER_PARENT"] = str(os.getpid())
    # stderr to a file: a pipe nobody reads would fill up and block the worker.
    self.stderr = tempfile.TemporaryFile()
    self.process = subprocess.Popen(
        [sys.executable, "-m", "dpc_tf.isolation", model_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        env=env, start_new_session=True)
    self.model_id = None  # Set once the model is loaded.

  def stderr_tail(self):
    self.stderr.seek(0)
    text = self.stderr.read().decode(errors="replace").strip()
    return text[-2000:] or "(no output)"

  def kill(self):
    try:
      os.killpg(self.process.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.process.wait()
    self.process.stdin.close()
    self.process.stdout.close()
    self.stderr.close()


class DecoderProcess:
  """Decodes `.dpc` bitstreams in a child process with a per-image time budget.

  Args:
    model_path: a model directory or exported full SavedModel (as `-m`).
    base_seconds, seconds_per_megapixel: the budget of one decode is
      base_seconds + seconds_per_megapixel * (declared pixels / 1e6).
    start_seconds: how long a worker may take to import TensorFlow and load
      the model (not part of any decode's budget).
    spare: keep a second worker loaded, so that a killed one is replaced at
      once instead of after TensorFlow's import (costs a worker's memory).
  """

  def __init__(self, model_path, base_seconds=BASE_SECONDS,
               seconds_per_megapixel=SECONDS_PER_MEGAPIXEL,
               start_seconds=START_SECONDS, spare=False):
    self.model_path = os.fspath(model_path)
    self.base_seconds = float(base_seconds)
    self.seconds_per_megapixel = float(seconds_per_megapixel)
    self.start_seconds = float(start_seconds)
    self.spare = bool(spare)
    self.restarts = 0  # Workers killed after a budget overrun.
    self._active = None
    self._spare = None

  def budget(self, pixels):
    """Seconds allowed to decode an image of this many pixels."""
    return self.base_seconds + self.seconds_per_megapixel * pixels / 1e6

  @property
  def model_id(self):
    return self._active.model_id if self._active else None

  def start(self):
    """Starts the worker(s) that are not running, without waiting for them."""
    if self._active is None:
      self._active = _Worker(self.model_path)
    if self.spare and self._spare is None:
      self._spare = _Worker(self.model_path)

  def wait_ready(self):
    """Starts the worker and waits until its model is loaded.

    Raises `DecoderStartError` (with the worker's own message, e.g. the
    `ModelFileError`) if it cannot load the model.
    """
    self.start()
    worker = self._active
    if worker.model_id is not None:
      return
    deadline = time.monotonic() + self.start_seconds
    try:
      message = _receive(worker.process.stdout.fileno(), deadline)
    except TimeoutError:
      self.close()
      raise DecoderStartError(f"The decoder process did not load {self.model_path} "
                              f"within {self.start_seconds:.0f} s.") from None
    if message is None or message[0] != "ready":
      detail = message[1] if message else worker.stderr_tail()
      self.close()
      raise DecoderStartError(detail)
    worker.model_id = message[1]

  def decode(self, data, max_pixels=container.DEFAULT_MAX_PIXELS, timeout=None):
    """bytes -> uint8 [H, W, C], as `Codec.decode`, within the time budget.

    Raises `BitstreamError` (the worker's, or `DecodeTimeoutError` when the
    budget runs out: the worker is then killed and replaced) and
    `DecoderCrashError` if the worker dies.
    """
    # The header is read here too (pure Python, microseconds): its size sets
    # the budget, and damaged files are refused without a round trip.
    header = container.unpack(data, max_pixels).header
    budget = self.budget(header.height * header.width) if timeout is None else timeout
    self.wait_ready()
    worker = self._active
    _send(worker.process.stdin, (bytes(data), max_pixels))
    try:
      reply = _receive(worker.process.stdout.fileno(), time.monotonic() + budget)
    except TimeoutError:
      self._replace()
      self.restarts += 1
      raise DecodeTimeoutError(
          f"Decoding did not finish within its budget of {budget:.1f} s for a "
          f"{header.width}x{header.height} image: the bitstream is damaged or "
          "crafted to hang the range decoder. The decoder process was "
          "stopped.") from None
    if reply is None:
      code = worker.process.wait()
      tail = worker.stderr_tail()
      self._replace()
      raise DecoderCrashError(
          f"The decoder process died (exit code {code}) while decoding a "
          f"{header.width}x{header.height} bitstream: {tail}")
    kind = reply[0]
    if kind == "ok":
      return reply[1]
    if kind == "error":
      raise getattr(container, reply[1], container.BitstreamError)(reply[2])
    raise RuntimeError(f"The decoder process failed: {reply[1]}")

  def _replace(self):
    """Kills the active worker; the spare (or a new one) takes its place."""
    self._active.kill()
    self._active, self._spare = self._spare, None
    self.start()  # Loads the next worker while the caller goes on.

  def close(self):
    """Stops the workers."""
    for worker in (self._active, self._spare):
      if worker is not None:
        worker.kill()
    self._active = self._spare = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  # Interpreter shutdown.
      pass


def _serve(model_path):
  """The worker: loads the model, then decodes requests until stdin closes."""
  if sys.platform.startswith("linux"):
    # Die with the parent: a worker spinning in a hung kernel never reads the
    # closed stdin that would otherwise end it.
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get("DPC_DECODER_PARENT"):
      return 1  # The parent died before prctl.
  # The protocol owns the real stdout; anything printed goes to stderr.
  channel = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  requests = sys.stdin.buffer.fileno()
  from dpc_tf import loading  # pylint: disable=import-outside-toplevel
  from dpc_tf import saving  # pylint: disable=import-outside-toplevel
  try:
    codec = loading.load_codec(model_path)
  except (saving.ModelFileError, OSError) as e:
    _send(channel, ("load_error", str(e)))
    return 1
  if hasattr(codec.model, "trace_decoder"):
    # Trace before saying ready: tracing takes seconds, which must not count
    # against the first file's time budget. Once traced, the decoder serves
    # every image size (shape-polymorphic signature).
    codec.model.trace_decoder()
  _send(channel, ("ready", codec.model_id))
  while True:
    request = _receive(requests)
    if request is None:
      return 0
    data, max_pixels = request
    try:
      reply = ("ok", codec.decode(data, max_pixels=max_pixels))
    except container.BitstreamError as e:
      reply = ("error", type(e).__name__, str(e))
    except Exception as e:  # pylint: disable=broad-except  # A bug: say which.
      reply = ("bug", f"{type(e).__name__}: {e}")
    _send(channel, reply)


if __name__ == "__main__":
  sys.exit(_serve(sys.argv[1]))
