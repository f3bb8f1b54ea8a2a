"""Factorized-prior model of Ballé, Laparra & Simoncelli (ICLR 2017).

J. Ballé, V. Laparra, E. P. Simoncelli: "End-to-end Optimized Image
Compression", https://arxiv.org/abs/1611.01704. One fully factorized density
per latent channel; no side information.
"""

import tensorflow as tf
import tensorflow_compression as tfc

from dpc_tf import layers
from dpc_tf.models.base import CompressionModel
from dpc_tf.models.registry import register_model


@register_model("factorized")
class FactorizedCodec(CompressionModel):
  """GDN analysis/synthesis transforms with a factorized entropy model."""

  stride = 16

  def __init__(self, num_filters=192, latent_depth=None, **kwargs):
    super().__init__(**kwargs)
    self.num_filters = int(num_filters)
    self.latent_depth = int(latent_depth or num_filters)
    self.analysis_transform = layers.AnalysisTransform(
        self.num_filters, self.latent_depth)
    self.synthesis_transform = layers.SynthesisTransform(self.num_filters)
    self.prior = tfc.NoisyDeepFactorized(batch_shape=(self.latent_depth,))
    self._build_weights()

  def get_config(self):
    return dict(super().get_config(), num_filters=self.num_filters,
                latent_depth=self.latent_depth)

  def _layer_input_channels(self):
    return [(self.analysis_transform, 3),
            (self.synthesis_transform, self.latent_depth)]

  @property
  def string_names(self):
    return ("y",)

  def _priors(self):
    return {"y": self.prior}

  def _forward(self, x, training, level):
    em = self._batched_entropy_model(self.prior)
    y = self._gain_latents(self.analysis_transform(x), level)
    y_hat, bits = self._bottleneck(em, y, training=training)
    return self.synthesis_transform(self._ungain_latents(y_hat, level)), bits

  def _compress_latents(self, y, level):
    return [self.frozen_y.compress(self._gain_latents(y, level))]

  def _decode_latents(self, strings, padded_shape, level):
    y_hat = self.frozen_y.decompress(strings[0], padded_shape // 16)
    return self._ungain_latents(y_hat, level)

  def _string_symbols(self, padded_height, padded_width):
    return [("y", (padded_height // 16) * (padded_width // 16))]

  def _latents(self, x, level):
    return tf.round(self._gain_latents(self.analysis_transform(x), level))
