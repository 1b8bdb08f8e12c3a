"""Autoregressive image models over pixels in raster order (the seq2seq texts' image part): a no-context baseline,
a pixel RNN, MADE, PixelCNN, Gated PixelCNN, PixelSNAIL and a pixel Transformer. See
:mod:`qkv.models.pixels.base`."""

from qkv.models.pixels.base import (
    GatedPixelCNNConfig,
    IndependentConfig,
    MADEConfig,
    PixelCNNConfig,
    PixelConfig,
    PixelModel,
    PixelRNNConfig,
    PixelSNAILConfig,
    PixelTransformerConfig,
    bits_per_dim,
)
from qkv.models.pixels.convolutional import GatedPixelCNN, MaskedConv2d, PixelCNN
from qkv.models.pixels.simple import MADE, IndependentPixels, PixelRNN
from qkv.models.pixels.snail import PixelSNAIL
from qkv.models.pixels.transformer import PixelTransformer

#: family name -> (config class, model class), registered in qkv.models.families
PIXEL_FAMILIES = {
    "pixel-independent": (IndependentConfig, IndependentPixels),
    "pixel-rnn": (PixelRNNConfig, PixelRNN),
    "made": (MADEConfig, MADE),
    "pixelcnn": (PixelCNNConfig, PixelCNN),
    "gated-pixelcnn": (GatedPixelCNNConfig, GatedPixelCNN),
    "pixelsnail": (PixelSNAILConfig, PixelSNAIL),
    "pixel-transformer": (PixelTransformerConfig, PixelTransformer),
}

__all__ = [
    "MADE",
    "PIXEL_FAMILIES",
    "GatedPixelCNN",
    "IndependentPixels",
    "MaskedConv2d",
    "PixelCNN",
    "PixelConfig",
    "PixelModel",
    "PixelRNN",
    "PixelSNAIL",
    "PixelTransformer",
    "bits_per_dim",
]
