"""Registered codec architectures (see `available_models()`)."""

from dpc_tf.models.base import CompressionModel
from dpc_tf.models.channelwise import ChannelwiseContextCodec
from dpc_tf.models.factorized import FactorizedCodec
from dpc_tf.models.hyperprior import HyperpriorCodec, MeanScaleHyperpriorCodec
from dpc_tf.models.registry import (available_models, create_model,
                                    model_class, register_model)
