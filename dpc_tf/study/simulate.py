"""Simulated raters, for examples and tests -- never for results about people.

A simulated rater prefers the stimulus with the higher PSNR against the
reference, through a Thurstone model: it chooses left when
(PSNR_left - PSNR_right) / noise_db + N(0, 1) > 0. An inattentive one picks a
side at random. Raters are added with kind 'simulated', which the report
prints as a banner, and answers go through `db.record_answer` like the web
app's.
"""

import numpy as np

from dpc_tf.study import db as db_lib


def _psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def simulate(study, conn, attentive=4, inattentive=1, noise_db=1.0, seed=0, fraction=1.0):
  """Adds simulated raters and their answers; returns their labels.

  fraction: the share of each rater's trials answered (the rest stay open).
  """
  from dpc_tf.images import read_image
  cache = {}

  def image(name):
    if name not in cache:
      cache[name] = read_image(study.files[name])
    return cache[name]

  def quality(stimulus):
    entry = study.stimuli[stimulus]
    return _psnr(image(entry["file"]), image(study.references[entry["image"]]["file"]))

  rng = np.random.default_rng(seed)
  labels = []
  for careful, count in ((True, attentive), (False, inattentive)):
    if not count:
      continue
    label = "simulated" if careful else "simulated-random"
    for _, name, token in db_lib.add_raters(conn, study, count, label, kind="simulated"):
      rater = db_lib.rater_for_token(conn, token)
      done, total = db_lib.progress(conn, rater["id"])
      for _ in range(int(round(fraction * total)) - done):
        current = db_lib.current_trial(conn, rater["id"])
        if careful:
          margin = (quality(current["left_stimulus"]) - quality(current["right_stimulus"]))
          left = margin / noise_db + rng.standard_normal() > 0
        else:
          left = rng.random() < 0.5
        db_lib.record_answer(conn, rater["id"], current["trial_id"],
                             "left" if left else "right", float(rng.lognormal(8, 0.5)))
      labels.append(name)
  return labels
