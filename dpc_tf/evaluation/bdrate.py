"""Bjøntegaard-delta rate between two rate-quality curves.

Built on the `bjontegaard` package (FAU-LMS), which interpolates log-rate as a
function of quality (Akima by default; "pchip" reproduces the JCT-VC/JVET
Excel sheets) and averages the difference over the quality range both curves
cover. This module adds what a codec comparison needs around it:

- The curves are reduced to their monotone part first: sorted by rate, a point
  is kept only if its quality is strictly better than every cheaper point's
  (the interpolators need strictly monotone data, and a point that costs more
  for less quality is never an operating point anyone would choose).
- Instead of raising or warning, every failure case returns NaN with a reason:
  fewer than two usable points, or no overlap of the quality ranges. The
  overlapping fraction of the quality range is reported with every result.

Negative BD-rate means the test codec needs fewer bits than the anchor for the
same quality.
"""

import dataclasses
import math
import warnings

import numpy as np

METHODS = ("akima", "pchip", "cubic")


@dataclasses.dataclass
class BDResult:
  """BD-rate in percent (NaN when it cannot be computed, with `reason`)."""
  bd_rate: float
  reason: str = None
  # Fraction of the union of both quality ranges that both curves cover.
  overlap: float = math.nan
  points_anchor: int = 0
  points_test: int = 0

  def as_dict(self):
    return dataclasses.asdict(self)


def monotone_curve(rates, qualities, higher_is_better=True):
  """Returns (rates, qualities) of the points on the monotone frontier.

  Sorted by increasing rate; a point is kept only if its quality is strictly
  better than all cheaper points'. Points with a non-finite or non-positive
  rate, or a non-finite quality (e.g. PSNR of a lossless point), are dropped.
  """
  rates = np.asarray(rates, dtype=np.float64)
  qualities = np.asarray(qualities, dtype=np.float64)
  if rates.shape != qualities.shape or rates.ndim != 1:
    raise ValueError(f"rates and qualities must be 1-D and of equal length, got shapes "
                     f"{rates.shape} and {qualities.shape}.")
  finite = np.isfinite(rates) & np.isfinite(qualities) & (rates > 0)
  rates, qualities = rates[finite], qualities[finite]
  sign = 1.0 if higher_is_better else -1.0
  # Sort by rate, and for equal rates best quality first.
  order = np.lexsort((-sign * qualities, rates))
  kept_rates, kept_qualities = [], []
  for rate, quality in zip(rates[order], qualities[order]):
    if not kept_qualities or sign * quality > sign * kept_qualities[-1]:
      kept_rates.append(rate)
      kept_qualities.append(quality)
  return np.array(kept_rates), np.array(kept_qualities)


def bd_rate(anchor_rates, anchor_qualities, test_rates, test_qualities,
            higher_is_better=True, method="akima"):
  """BD-rate (percent) of a test curve against an anchor curve.

  Args:
    anchor_rates, anchor_qualities: the anchor's points (e.g. bpp and PSNR).
    test_rates, test_qualities: the test codec's points.
    higher_is_better: False for distortions such as LPIPS.
    method: interpolation, one of "akima", "pchip", "cubic".

  Returns:
    A `BDResult`; its `bd_rate` is NaN with a `reason` if it is undefined.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown BD interpolation {method!r}; choose one of {METHODS}.")
  import bjontegaard
  anchor = monotone_curve(anchor_rates, anchor_qualities, higher_is_better)
  test = monotone_curve(test_rates, test_qualities, higher_is_better)
  result = BDResult(math.nan, points_anchor=len(anchor[0]), points_test=len(test[0]))
  needed = 4 if method == "cubic" else 2
  for label, (rates, _) in (("anchor", anchor), ("test", test)):
    if len(rates) < needed:
      result.reason = (f"the {label} curve has {len(rates)} usable point(s) (monotone, "
                       f"finite); {method} interpolation needs at least {needed}.")
      return result
  low = max(anchor[1].min(), test[1].min())
  high = min(anchor[1].max(), test[1].max())
  span = max(anchor[1].max(), test[1].max()) - min(anchor[1].min(), test[1].min())
  result.overlap = float(max(high - low, 0.0) / span) if span > 0 else 0.0
  if high <= low:
    result.reason = (
        f"quality ranges do not overlap (anchor {anchor[1].min():.4g}..{anchor[1].max():.4g}, "
        f"test {test[1].min():.4g}..{test[1].max():.4g}).")
    return result
  # bd_rate interpolates log-rate over quality, which must be increasing:
  # sort both curves by quality (for lower-is-better metrics the frontier runs
  # the other way).
  curves = []
  for rates, qualities in (anchor, test):
    order = np.argsort(qualities)
    curves += [rates[order], qualities[order]]
  with warnings.catch_warnings():
    # The package warns on partial overlap; the overlap is reported instead.
    warnings.simplefilter("ignore")
    value = bjontegaard.bd_rate(*curves, method=method, require_matching_points=False,
                                min_overlap=0.0)
  result.bd_rate = float(value)
  if not math.isfinite(result.bd_rate):
    result.reason = "interpolation gave a non-finite value."
  return result
