"""The LPIPS trunks as torchvision builds them: AlexNet, VGG16, SqueezeNet 1.1.

LPIPS (Zhang et al. 2018, the `lpips` package 0.1.4) taps the ReLU outputs of
torchvision's `features` stacks. This module describes those stacks layer by
layer, with torchvision's indices, so that the Keras port
(`perceptual.lpips`), the weight converter (`perceptual.convert`) and the
seeded test weights (`perceptual.testing`) all read one description. It is
plain Python (no TensorFlow, no PyTorch).

Parameter names follow torchvision's state dicts (`features.3.weight`,
`features.3.squeeze.bias`, ...) and the `lpips` package's lin layers
(`lin0.model.1.weight`); PyTorch stores convolution kernels as OIHW.
"""

import collections
import dataclasses
import math
from typing import Tuple

LPIPS_VERSION = "0.1"


@dataclasses.dataclass(frozen=True)
class Conv:
  """torch.nn.Conv2d with bias (torchvision's trunks all have biases)."""
  index: int
  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int = 1
  padding: int = 0

  def output_size(self, size):
    return (size + 2 * self.padding - self.kernel_size) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class ReLU:
  index: int

  def output_size(self, size):
    return size


@dataclasses.dataclass(frozen=True)
class MaxPool:
  """torch.nn.MaxPool2d without padding; `ceil_mode` as in SqueezeNet."""
  index: int
  kernel_size: int
  stride: int
  ceil_mode: bool = False

  def output_size(self, size):
    if size < self.kernel_size:
      return 0
    steps = (size - self.kernel_size) / self.stride
    # Without padding, PyTorch's rule that the last window must start inside
    # the input never removes a ceil-mode window, so this is the whole rule.
    return (math.ceil(steps) if self.ceil_mode else math.floor(steps)) + 1


@dataclasses.dataclass(frozen=True)
class Fire:
  """torchvision.models.squeezenet.Fire: squeeze 1x1, then 1x1 and 3x3 expands
  (ReLU after each), concatenated along channels (1x1 first)."""
  index: int
  in_channels: int
  squeeze_channels: int
  expand1x1_channels: int
  expand3x3_channels: int

  @property
  def out_channels(self):
    return self.expand1x1_channels + self.expand3x3_channels

  def output_size(self, size):
    return size

  def convs(self):
    """(name, Conv) of the three convolutions, in state-dict order."""
    return (
        ("squeeze", Conv(self.index, self.in_channels, self.squeeze_channels, 1)),
        ("expand1x1",
         Conv(self.index, self.squeeze_channels, self.expand1x1_channels, 1)),
        ("expand3x3",
         Conv(self.index, self.squeeze_channels, self.expand3x3_channels, 3,
              padding=1)),
    )


@dataclasses.dataclass(frozen=True)
class Trunk:
  """One LPIPS trunk: torchvision's `features` up to the last tapped layer."""
  name: str                # LPIPS's name: "alex", "vgg", "squeeze".
  torchvision_name: str    # torchvision.models builder.
  checkpoint: str          # torchvision's ImageNet checkpoint file.
  layers: Tuple
  # LPIPS taps the output of these `features` indices (each a ReLU or Fire).
  taps: Tuple[int, ...]

  def tap_channels(self):
    """Channels of each tapped activation (= the lin layers' inputs)."""
    channels, result = 3, []
    for layer in self.layers:
      channels = getattr(layer, "out_channels", channels)
      if layer.index in self.taps:
        result.append(channels)
    return tuple(result)

  def tap_sizes(self, height, width):
    """Spatial size (h, w) of each tapped activation for an input size."""
    sizes = []
    for layer in self.layers:
      height, width = layer.output_size(height), layer.output_size(width)
      if layer.index in self.taps:
        sizes.append((height, width))
    return tuple(sizes)

  def min_input_size(self):
    """Smallest square side for which every tapped activation is non-empty."""
    side = 1
    while min(min(s) for s in self.tap_sizes(side, side)) < 1:
      side += 1
    return side

  def checkpoint_sha256_prefix(self):
    """torchvision names checkpoints `<arch>-<first 8 hex digits of sha256>`."""
    return self.checkpoint.rsplit("-", 1)[1].split(".")[0]


def _vgg16_layers():
  layers, index, channels = [], 0, 3
  for block, (width, convs) in enumerate(
      ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
    if block:
      layers.append(MaxPool(index, 2, 2))
      index += 1
    for _ in range(convs):
      layers += [Conv(index, channels, width, 3, padding=1), ReLU(index + 1)]
      channels, index = width, index + 2
  return tuple(layers)


TRUNKS = {
    "alex": Trunk(
        name="alex",
        torchvision_name="alexnet",
        checkpoint="alexnet-owt-7be5be79.pth",
        layers=(
            Conv(0, 3, 64, 11, stride=4, padding=2), ReLU(1), MaxPool(2, 3, 2),
            Conv(3, 64, 192, 5, padding=2), ReLU(4), MaxPool(5, 3, 2),
            Conv(6, 192, 384, 3, padding=1), ReLU(7),
            Conv(8, 384, 256, 3, padding=1), ReLU(9),
            Conv(10, 256, 256, 3, padding=1), ReLU(11),
        ),
        taps=(1, 4, 7, 9, 11),
    ),
    "vgg": Trunk(
        name="vgg",
        torchvision_name="vgg16",
        checkpoint="vgg16-397923af.pth",
        layers=_vgg16_layers(),
        taps=(3, 8, 15, 22, 29),  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    ),
    "squeeze": Trunk(
        name="squeeze",
        torchvision_name="squeezenet1_1",
        checkpoint="squeezenet1_1-b8a52dc0.pth",
        layers=(
            Conv(0, 3, 64, 3, stride=2), ReLU(1),
            MaxPool(2, 3, 2, ceil_mode=True),
            Fire(3, 64, 16, 64, 64), Fire(4, 128, 16, 64, 64),
            MaxPool(5, 3, 2, ceil_mode=True),
            Fire(6, 128, 32, 128, 128), Fire(7, 256, 32, 128, 128),
            MaxPool(8, 3, 2, ceil_mode=True),
            Fire(9, 256, 48, 192, 192), Fire(10, 384, 48, 192, 192),
            Fire(11, 384, 64, 256, 256), Fire(12, 512, 64, 256, 256),
        ),
        taps=(1, 4, 7, 9, 10, 11, 12),
    ),
}


def available_trunks():
  return tuple(TRUNKS)


def get_trunk(name):
  """Returns the `Trunk` called `name` ("alex", "vgg" or "squeeze")."""
  try:
    return TRUNKS[name]
  except KeyError:
    raise ValueError(
        f"Unknown LPIPS trunk {name!r}; choose one of "
        f"{', '.join(TRUNKS)}.") from None


def named_convs(trunk):
  """(parameter prefix, Conv) of every convolution, in state-dict order.

  The prefix is torchvision's: "features.0" or "features.3.squeeze".
  """
  trunk = get_trunk(trunk) if isinstance(trunk, str) else trunk
  result = []
  for layer in trunk.layers:
    if isinstance(layer, Conv):
      result.append((f"features.{layer.index}", layer))
    elif isinstance(layer, Fire):
      for name, conv in layer.convs():
        result.append((f"features.{layer.index}.{name}", conv))
  return result


def torch_trunk_shapes(trunk):
  """Ordered {torchvision parameter name: shape} of a trunk's used layers."""
  shapes = collections.OrderedDict()
  for prefix, conv in named_convs(trunk):
    shapes[f"{prefix}.weight"] = (conv.out_channels, conv.in_channels,
                                  conv.kernel_size, conv.kernel_size)
    shapes[f"{prefix}.bias"] = (conv.out_channels,)
  return shapes


def torch_lin_shapes(trunk):
  """Ordered {lpips parameter name: shape} of the lin layers (1x1, no bias)."""
  trunk = get_trunk(trunk) if isinstance(trunk, str) else trunk
  return collections.OrderedDict(
      (f"lin{k}.model.1.weight", (1, channels, 1, 1))
      for k, channels in enumerate(trunk.tap_channels()))
