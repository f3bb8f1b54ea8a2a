"""Perceptual metrics and distortion losses for training codecs.

Images are NHWC float tensors with values in [0, 1].
"""

from perceptual.losses import (MSE, MSSSIM, Distortion, available_distortions,
                               get_distortion, mse, msssim_loss,
                               register_distortion)
from perceptual.msssim import msssim, msssim_db
