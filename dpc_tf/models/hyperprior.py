"""Hyperprior models: Ballé et al. (ICLR 2018) and Minnen et al. (NeurIPS 2018).

`hyperprior`: J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston,
"Variational image compression with a scale hyperprior",
https://arxiv.org/abs/1802.01436. Side information z predicts the scale of each
latent, coded with a zero-mean Gaussian.

`mean_scale_hyperprior`: D. Minnen, J. Ballé, G. Toderici, "Joint
Autoregressive and Hierarchical Priors for Learned Image Compression",
https://arxiv.org/abs/1809.02736, without the context model: z predicts a mean
and a scale for each latent.
"""

import tensorflow as tf
import tensorflow_compression as tfc

from dpc_tf import layers
from dpc_tf.models.base import CompressionModel
from dpc_tf.models.registry import register_model


@register_model("hyperprior")
class HyperpriorCodec(CompressionModel):
  """Scale hyperprior (Ballé et al. 2018)."""

  stride = 64  # 16 in the analysis transform, 4 more in the hyper-analysis.
  predicts_means = False

  def __init__(self, num_filters=192, latent_depth=None, hyperprior_depth=None,
               **kwargs):
    super().__init__(**kwargs)
    self.num_filters = int(num_filters)
    self.latent_depth = int(latent_depth or num_filters)
    self.hyperprior_depth = int(hyperprior_depth or num_filters)
    self.analysis_transform = layers.AnalysisTransform(
        self.num_filters, self.latent_depth)
    self.synthesis_transform = layers.SynthesisTransform(self.num_filters)
    self.hyper_analysis_transform = layers.HyperAnalysisTransform(
        self.num_filters, self.hyperprior_depth,
        absolute_input=not self.predicts_means)
    params = 2 if self.predicts_means else 1
    self.hyper_synthesis_transform = layers.HyperSynthesisTransform(
        self.num_filters, params * self.latent_depth)
    self.hyperprior = tfc.NoisyDeepFactorized(batch_shape=(self.hyperprior_depth,))
    self._build_weights()

  def get_config(self):
    return dict(super().get_config(), num_filters=self.num_filters,
                latent_depth=self.latent_depth,
                hyperprior_depth=self.hyperprior_depth)

  def _layer_input_channels(self):
    return [(self.analysis_transform, 3),
            (self.synthesis_transform, self.latent_depth),
            (self.hyper_analysis_transform, self.latent_depth),
            (self.hyper_synthesis_transform, self.hyperprior_depth)]

  @property
  def string_names(self):
    return ("z", "y")

  def _priors(self):
    return {"z": self.hyperprior}

  def _uses_indexed_model(self):
    return True

  def _entropy_parameters(self, z_hat, y_shape, level):
    """Hyper-synthesis output -> (scale indexes, means or None).

    Cropped to the latents' size: when a side is not a multiple of 64 (as in
    some training crops), upsampling z overshoots y.
    """
    params = self.hyper_synthesis_transform(
        self._ungain_hyper_latents(z_hat, level))[:, :y_shape[0], :y_shape[1]]
    if self.predicts_means:
      indexes, means = tf.split(params, 2, axis=-1)
      return indexes, means
    return params, None

  def _forward(self, x, training, level):
    em_z = self._batched_entropy_model(self.hyperprior)
    em_y = self._indexed_entropy_model()
    y = self._gain_latents(self.analysis_transform(x), level)
    z = self._hyper_latents(y, level)
    z_hat, z_bits = self._bottleneck(em_z, z, training=training)
    indexes, means = self._entropy_parameters(z_hat, tf.shape(y)[1:3], level)
    y_hat, y_bits = self._bottleneck(em_y, y, indexes, loc=means,
                                     training=training)
    return (self.synthesis_transform(self._ungain_latents(y_hat, level)),
            y_bits + z_bits)

  def _compress_latents(self, y, level):
    y = self._gain_latents(y, level)
    z = self._hyper_latents(y, level)
    indexes, means = self._entropy_parameters(self.frozen_z.quantize(z),
                                              tf.shape(y)[1:3], level)
    return [self.frozen_z.compress(z),
            self.frozen_indexed.compress(y, indexes, loc=means)]

  def _decode_latents(self, strings, padded_shape, level):
    z_hat = self.frozen_z.decompress(strings[0], padded_shape // self.stride)
    indexes, means = self._entropy_parameters(z_hat, padded_shape // 16, level)
    y_hat = self.frozen_indexed.decompress(strings[1], indexes, loc=means)
    return self._ungain_latents(y_hat, level)

  def _string_symbols(self, padded_height, padded_width):
    z = (padded_height // self.stride) * (padded_width // self.stride)
    return [("z", z),
            ("indexed", (padded_height // 16) * (padded_width // 16) * self.latent_depth)]

  def _latents(self, x, level):
    y = self._gain_latents(self.analysis_transform(x), level)
    if not self.predicts_means:
      return tf.round(y)
    z_hat = tf.round(self._hyper_latents(y, level))
    _, means = self._entropy_parameters(z_hat, tf.shape(y)[1:3], level)
    return tf.round(y - means) + means


@register_model("mean_scale_hyperprior")
class MeanScaleHyperpriorCodec(HyperpriorCodec):
  """Mean-scale hyperprior (Minnen et al. 2018, without the context model)."""

  predicts_means = True
