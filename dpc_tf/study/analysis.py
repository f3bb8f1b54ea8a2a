"""Statistics of a 2AFC study: preference rates with confidence intervals,
Bradley-Terry scales, rater screening.

- Wilson score intervals treat every answer as independent.
- The bootstrap resamples raters and images (both with replacement, jointly,
  as in two-way cluster bootstraps): an answer is counted as many times as its
  rater times its image were drawn. Its percentile intervals account for
  raters and images that differ, which Wilson's do not.
- Bradley-Terry: P(i preferred to j) = 1 / (1 + exp(s_j - s_i)). The scale s
  (natural log-odds) is fitted per target rate by Newton's method on the
  log-likelihood plus a weak N(0, PRIOR_SD^2) prior on each s, which keeps s
  finite when a codec wins every comparison. It is reported relative to an
  anchor codec (s_anchor = 0), with bootstrap intervals.
"""

import numpy as np

Z95 = 1.959963984540054
PRIOR_SD = 3.0


def wilson(wins, n, z=Z95):
  """Wilson score interval (low, high) of a proportion wins / n."""
  if n == 0:
    return float("nan"), float("nan")
  p = wins / n
  denominator = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
  return float(center - half), float(center + half)


def cluster_weights(raters, images, samples, rng):
  """[samples, answers] bootstrap weights: for each answer, how often its
  rater times how often its image was drawn."""
  rater_ids, rater_index = np.unique(raters, return_inverse=True)
  image_ids, image_index = np.unique(images, return_inverse=True)
  rater_counts = rng.multinomial(len(rater_ids), np.full(len(rater_ids), 1 / len(rater_ids)),
                                 size=samples)
  image_counts = rng.multinomial(len(image_ids), np.full(len(image_ids), 1 / len(image_ids)),
                                 size=samples)
  return rater_counts[:, rater_index] * image_counts[:, image_index]


def percentile_interval(values, level=0.95):
  values = np.asarray(values, float)
  values = values[np.isfinite(values)]
  if values.size == 0:
    return float("nan"), float("nan")
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return float(low), float(high)


def bradley_terry(first, second, first_won, count, weights=None, prior_sd=PRIOR_SD,
                  iterations=100):
  """MAP Bradley-Terry scale of `count` items from paired comparisons.

  Args:
    first, second: int arrays, the items compared in each answer.
    first_won: bool array, whether `first` was preferred.
    weights: answer weights (bootstrap counts); default 1.
  Returns: float array [count], log-odds scale (gauge fixed by the prior).
  """
  first, second = np.asarray(first), np.asarray(second)
  won = np.asarray(first_won, bool)
  weights = np.ones(len(first)) if weights is None else np.asarray(weights, float)
  winner = np.where(won, first, second)
  loser = np.where(won, second, first)
  wins = np.zeros((count, count))
  np.add.at(wins, (winner, loser), weights)
  games = wins + wins.T
  scale = np.zeros(count)
  precision = 1.0 / prior_sd ** 2
  for _ in range(iterations):
    p = 1.0 / (1.0 + np.exp(scale[None, :] - scale[:, None]))  # p[i, j] = P(i beats j)
    gradient = wins.sum(1) - (games * p).sum(1) - precision * scale
    curvature = games * p * p.T
    hessian = curvature - np.diag(curvature.sum(1)) - precision * np.eye(count)
    step = np.linalg.solve(hessian, gradient)
    scale -= step
    if np.max(np.abs(step)) < 1e-10:
      break
  return scale
