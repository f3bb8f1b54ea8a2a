"""The study folder: its manifest (`study.json`), the comparison plan, and
each rater's sequence of trials.

    STUDY/study.json         the manifest (below)
    STUDY/images/ID.png      reference images and decoded stimuli, named by
                             opaque ids so that a URL reveals no codec
    STUDY/responses.sqlite   the answers (`dpc_tf.study.db`; --db elsewhere)

Manifest fields: `format`, `version`, `study_id` (a hash of the plan: the
database records it, so answers are never mixed with another plan's),
`seed`, `targets_bpp`, `codecs` (name, description, how its setting was
found), `references` and `stimuli` (id, file, sha256, and for stimuli the
image, codec, target, setting and achieved `bpp`), `trials` (id, image,
target, `kind` "test" or "sentinel", stimuli `a` and `b`, and for sentinels
`expected`, the better one), `trials_per_rater` and `notes`.

The plan compares every pair of codecs on every image at every target once
(`test` trials), plus `sentinel` trials in which one side is clearly worse.
Each rater gets the sentinels and either all test trials or a slice of a
seeded permutation of them (`trials_per_rater`), the slices of successive
raters following each other so that trials are covered evenly. A rater's
trials are shuffled and exactly half (±1) show stimulus `a` on the left;
both come from the seed and the rater's number, so the plan is reproducible.
"""

import dataclasses
import hashlib
import json
import os
import random

from perceptual.lpips_weights import file_sha256

FORMAT = "dpc-study"
VERSION = 1
MANIFEST = "study.json"
IMAGE_DIR = "images"
DEFAULT_DB = "responses.sqlite"


class StudyError(ValueError):
  """A study folder or plan is unusable; the message says what to do."""


def stimulus_id(seed, *parts):
  """An opaque, reproducible file id: raters must not read codecs off URLs."""
  text = "|".join(str(p) for p in (seed,) + parts)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_id(manifest):
  """Hash of what answers refer to: the stimuli, trials and seed."""
  core = {k: manifest[k] for k in ("seed", "stimuli", "trials", "trials_per_rater")}
  return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def make_trials(images, targets, codecs, seed, sentinels=()):
  """The comparison plan: all codec pairs per image and target, then sentinels.

  Args:
    images, targets, codecs: ids, target bpps and codec names, in order.
    seed: shuffles the trial list before numbering, so ids say nothing of codecs.
    sentinels: (image, target, good stimulus, bad stimulus) tuples.
  Returns: list of trial dicts; stimuli of test trials are referred to by
    `test_stimulus(seed, image, codec, target)` ids.
  """
  trials = []
  for image in images:
    for target in targets:
      for i, first in enumerate(codecs):
        for second in codecs[i + 1:]:
          trials.append({"image": image, "target_bpp": target, "kind": "test",
                         "a": test_stimulus(seed, image, first, target),
                         "b": test_stimulus(seed, image, second, target),
                         "expected": None})
  for image, target, good, bad in sentinels:
    trials.append({"image": image, "target_bpp": target, "kind": "sentinel",
                   "a": good, "b": bad, "expected": good})
  random.Random(f"{seed}:trials").shuffle(trials)
  for number, trial in enumerate(trials, 1):
    trial["id"] = f"t{number:04d}"
  return sorted(trials, key=lambda t: t["id"])


def test_stimulus(seed, image, codec, target):
  return stimulus_id(seed, image, codec, repr(float(target)), "test")


@dataclasses.dataclass(frozen=True)
class Shown:
  """One trial as a rater sees it."""
  position: int
  trial_id: str
  left: str
  right: str


def rater_sequence(manifest, rater_number):
  """The trials of rater `rater_number` (0, 1, ...), in order, sides chosen."""
  seed = manifest["seed"]
  tests = [t for t in manifest["trials"] if t["kind"] == "test"]
  sentinels = [t for t in manifest["trials"] if t["kind"] == "sentinel"]
  per_rater = manifest.get("trials_per_rater")
  if per_rater and per_rater < len(tests):
    order = random.Random(f"{seed}:coverage").sample(tests, len(tests))
    start = (rater_number * per_rater) % len(order)
    tests = [order[(start + i) % len(order)] for i in range(per_rater)]
  chosen = tests + sentinels
  rng = random.Random(f"{seed}:rater:{rater_number}")
  rng.shuffle(chosen)
  flips = [i % 2 == 1 for i in range(len(chosen))]
  rng.shuffle(flips)
  return [Shown(position, t["id"], *((t["b"], t["a"]) if flip else (t["a"], t["b"])))
          for position, (t, flip) in enumerate(zip(chosen, flips))]


def write_manifest(folder, manifest):
  from dpc_tf.images import write_atomic
  data = json.dumps(manifest, indent=1, sort_keys=True).encode()
  write_atomic(os.path.join(folder, MANIFEST), lambda f: f.write(data), overwrite=True)


class Study:
  """A study folder, checked: every listed image exists with its recorded hash.

  Raises `StudyError` naming the folder and the problem.
  """

  def __init__(self, folder, verify=True):
    self.folder = os.path.abspath(folder)
    path = os.path.join(self.folder, MANIFEST)
    if not os.path.isfile(path):
      raise StudyError(f"{folder}: not a study folder (no {MANIFEST}); make one with "
                       "`dpc study create`.")
    try:
      with open(path) as f:
        manifest = json.load(f)
    except (OSError, ValueError) as e:
      raise StudyError(f"{path}: unreadable manifest ({e}).") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
      raise StudyError(f"{path}: not a {FORMAT} manifest of version {VERSION} "
                       f"(format {manifest.get('format')!r}, version {manifest.get('version')!r}).")
    if plan_id(manifest) != manifest.get("study_id"):
      raise StudyError(f"{path}: the plan does not match its study_id; the manifest was "
                       "edited. Recreate the study with `dpc study create`.")
    self.manifest = manifest
    self.study_id = manifest["study_id"]
    self.references = {r["id"]: r for r in manifest["references"]}
    self.stimuli = {s["id"]: s for s in manifest["stimuli"]}
    self.trials = {t["id"]: t for t in manifest["trials"]}
    # File name -> absolute path of every image a page may show; nothing else is served.
    self.files = {}
    for entry in list(self.references.values()) + list(self.stimuli.values()):
      name = entry["file"]
      if os.path.basename(name) != name or not name.endswith(".png"):
        raise StudyError(f"{path}: bad image file name {name!r} in the manifest.")
      self.files[name] = os.path.join(self.folder, IMAGE_DIR, name)
    for trial in manifest["trials"]:
      for key in ("a", "b"):
        if trial[key] not in self.stimuli:
          raise StudyError(f"{path}: trial {trial['id']} names unknown stimulus {trial[key]!r}.")
    if verify:
      self.verify()

  def verify(self):
    """Checks that every image is present and unchanged."""
    entries = list(self.references.values()) + list(self.stimuli.values())
    missing = [e["file"] for e in entries if not os.path.isfile(self.files[e["file"]])]
    if missing:
      raise StudyError(
          f"{self.folder}: {len(missing)} image(s) listed in {MANIFEST} are missing from "
          f"{IMAGE_DIR}/ (first: {missing[0]}). Restore the folder as `dpc study create` "
          "wrote it, or create the study again.")
    changed = [e["file"] for e in entries if file_sha256(self.files[e["file"]]) != e["sha256"]]
    if changed:
      raise StudyError(
          f"{self.folder}: {len(changed)} image(s) differ from what {MANIFEST} recorded "
          f"(first: {changed[0]}); answers about them would be meaningless. Restore them or "
          "create the study again.")

  def sequence(self, rater_number):
    return rater_sequence(self.manifest, rater_number)

  def reference_file(self, trial):
    return self.references[trial["image"]]["file"]

  def codec_of(self, stimulus):
    return self.stimuli[stimulus]["codec"]
