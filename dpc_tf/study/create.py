"""`dpc study create`: code the images, pick the stimuli, write the study folder.

The folder is built in a temporary directory beside the destination and
renamed into place at the end, so an interrupted run leaves no half study.
"""

import datetime
import math
import os
import random
import re
import shutil
import tempfile

from perceptual.lpips_weights import file_sha256
from dpc_tf.study import study as study_lib
from dpc_tf.study.codecs import ClassicalStudyCodec

SENTINEL_CODEC = "jpeg420"
SENTINEL_FACTOR = 0.25
# A sentinel's bad side must be at most this fraction of the target's rate,
# even when the sentinel codec cannot go as low as SENTINEL_FACTOR.
SENTINEL_MAX_FACTOR = 0.5


def image_ids(paths):
  """Stable ids from file names: letters, digits, '-' and '_' only."""
  ids = {}
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    image_id = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image"
    if image_id in ids:
      raise ValueError(f"images {ids[image_id]!r} and {path!r} have the same name; each "
                       "reference image needs a distinct file name.")
    ids[image_id] = path
  return ids


def _save_png(folder, name, image):
  from dpc_tf.images import write_image
  path = os.path.join(folder, study_lib.IMAGE_DIR, name)
  write_image(path, image)
  return file_sha256(path)


def create_study(image_paths, study_codecs, targets, out, seed=0, sentinels=None,
                 sentinel_codec=SENTINEL_CODEC, sentinel_factor=SENTINEL_FACTOR,
                 trials_per_rater=None, progress=True, log=print):
  """Writes a study folder to `out` and returns its manifest.

  Args:
    image_paths: reference images (any format `dpc_tf.read_image` reads).
    study_codecs: `dpc_tf.study.codecs.StudyCodec`s, at least two.
    targets: target rates in bpp.
    sentinels: number of sentinel trials (default: a tenth of a rater's test
      trials, at least 2); 0 for none.
    trials_per_rater: test trials per rater (default all).
  """
  from dpc_tf.evaluation import codecs as classical
  from dpc_tf.images import read_image
  targets = sorted({float(t) for t in targets})
  if not targets or min(targets) <= 0:
    raise ValueError(f"target rates must be positive bpp values, got {targets}.")
  names = [c.name for c in study_codecs]
  if len(names) < 2 or len(set(names)) != len(names):
    raise ValueError(f"a study compares at least two distinct codecs, got {names}.")
  if os.path.exists(out) and os.listdir(out):
    raise ValueError(f"{out} exists and is not empty; choose another --out.")
  ids = image_ids(image_paths)
  images, notes = {}, []
  for image_id, path in ids.items():
    images[image_id] = read_image(path, alpha="composite", notes=notes)
  pairs = len(names) * (len(names) - 1) // 2
  tests = len(images) * len(targets) * pairs
  if trials_per_rater is not None and not 1 <= trials_per_rater <= tests:
    raise ValueError(f"--trials-per-rater must be in [1, {tests}] (the plan has {tests} test "
                     f"trials), got {trials_per_rater}.")
  per_rater = trials_per_rater or tests
  combos = [(i, t) for i in images for t in targets]
  if sentinels is None:
    sentinels = min(len(combos), max(2, math.ceil(per_rater / 10)))
  if not 0 <= sentinels <= len(combos):
    raise ValueError(f"--sentinels must be in [0, {len(combos)}] (one per image and target), "
                     f"got {sentinels}.")

  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  work = tempfile.mkdtemp(prefix=".study-", dir=parent)
  try:
    os.makedirs(os.path.join(work, study_lib.IMAGE_DIR))
    references = []
    for image_id, image in images.items():
      name = study_lib.stimulus_id(seed, image_id, "reference") + ".png"
      references.append({"id": image_id, "file": name, "source": os.path.abspath(ids[image_id]),
                         "width": image.shape[1], "height": image.shape[0],
                         "sha256": _save_png(work, name, image)})
    stimuli = []

    def add_stimuli(codec, coded, role):
      made = {}
      for (image_id, target), c in sorted(coded.items()):
        if role == "test":
          sid = study_lib.test_stimulus(seed, image_id, codec.name, target)
        else:
          sid = study_lib.stimulus_id(seed, image_id, codec.name, repr(target), role)
        decoded = codec.decode(c)
        if decoded.shape != images[image_id].shape:
          raise ValueError(f"codec {codec.name!r} decoded {image_id} to shape {decoded.shape}, "
                           f"expected {images[image_id].shape}.")
        stimuli.append({"id": sid, "file": sid + ".png", "image": image_id, "codec": codec.name,
                        "role": role, "target_bpp": target, "setting": str(c.setting),
                        "bpp": round(c.bpp, 6), "bytes": len(c.data),
                        "sha256": _save_png(work, sid + ".png", decoded)})
        made[(image_id, target)] = sid
      return made

    for codec in study_codecs:
      log(f"{codec.name}: {codec.method}")
      add_stimuli(codec, codec.code(images, targets, progress=progress), "test")

    sentinel_trials = []
    if sentinels:
      rng = random.Random(f"{seed}:sentinels")
      chosen = sorted(rng.sample(combos, sentinels))
      reason = classical.unavailable_reason(sentinel_codec)
      if reason:
        raise ValueError(f"sentinel codec {sentinel_codec!r} cannot run here ({reason}); pass "
                         "--sentinels 0 or another --sentinel-codec.")
      bad_codec = ClassicalStudyCodec(classical.get_codec(sentinel_codec))
      wanted = {}
      for image_id, target in chosen:
        wanted.setdefault(image_id, []).append(target)
      bad = {}
      for image_id, image_targets in wanted.items():
        low = {t * sentinel_factor: t for t in image_targets}
        coded = bad_codec.code({image_id: images[image_id]}, list(low), progress=False,
                               floor={l: t * SENTINEL_MAX_FACTOR for l, t in low.items()})
        bad.update({(i, low[l]): c for (i, l), c in coded.items()})
      skipped = [combo for combo in chosen if combo not in bad]
      for image_id, target in skipped:
        notes.append(f"no sentinel for {image_id} at {target:g} bpp: {sentinel_codec} cannot "
                     f"go under {SENTINEL_MAX_FACTOR:g} x the target there.")
      bad_ids = add_stimuli(bad_codec, bad, "sentinel")
      for n, (image_id, target) in enumerate(c for c in chosen if c in bad):
        # The good side cycles through the codecs of the study.
        good = study_lib.test_stimulus(seed, image_id, names[n % len(names)], target)
        sentinel_trials.append((image_id, target, good, bad_ids[(image_id, target)]))
      if not sentinel_trials:
        raise ValueError(f"no sentinel trial could be made ({sentinel_codec} cannot go low "
                         "enough at any target); pass --sentinels 0 or higher --bpp.")

    manifest = {
        "format": study_lib.FORMAT, "version": study_lib.VERSION, "seed": seed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "targets_bpp": targets,
        "codecs": [c.manifest_entry() for c in study_codecs],
        "sentinel": {"codec": sentinel_codec, "factor": sentinel_factor,
                     "count": len(sentinel_trials)},
        "references": references, "stimuli": stimuli,
        "trials": study_lib.make_trials(list(images), targets, names, seed, sentinel_trials),
        "trials_per_rater": trials_per_rater, "notes": notes,
    }
    manifest["study_id"] = study_lib.plan_id(manifest)
    study_lib.write_manifest(work, manifest)
    os.chmod(work, 0o755)  # mkdtemp's 0700 would hide it from a proxy's user.
    if os.path.isdir(out):
      os.rmdir(out)  # Empty, checked above.
    os.rename(work, out)
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    raise
  return manifest
