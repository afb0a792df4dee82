"""Random initialisation of AV-HuBERT: its own from-scratch scheme, or BERT-style.

:func:`init_native_` reproduces what ``AVHubertModel(cfg)`` gives a model before
training (facebookresearch/av_hubert ``avhubert/hubert.py`` and ``avhubert/resnet.py``,
on fairseq commit afc77bd ``fairseq/models/wav2vec/wav2vec2.py``):

- the modules' constructors run first (PyTorch defaults: the 3-D stem conv, the
  front-end projections, ``post_extract_proj``; BatchNorm/LayerNorm 1/0; PReLU 0.25);
- ``ResNet.__init__`` draws every trunk ``Conv2d`` from ``N(0, sqrt(2 / n))`` with
  ``n = k * k * out_channels`` (He normal, fan-out) and sets BatchNorm2d to 1/0;
- ``TransformerEncoder.__init__`` draws the positional conv from
  ``N(0, sqrt(4 / (k * D)))`` (fairseq sets dropout to 0 in that formula), bias 0,
  before wrapping it in weight norm (so ``g = ||v||`` and the effective weight is
  that draw), then applies ``init_bert_params`` to itself only: every ``Linear`` in
  the encoder ``N(0, 0.02)``, bias 0.

The paper (Supp. D) summarises this as "linear and embedding layers BERT-style";
in the code ``init_bert_params`` reaches only the transformer encoder, so the three
front-end projections keep PyTorch's default. Modules are initialised from torch's
global generator: call inside :func:`~featstore.encoders.random_init.seeded`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from featstore.encoders.avhubert.model import AVHubertModel, WeightNormConv1d
from featstore.encoders.random_init import BERT, InitScheme, bert_init_

__all__ = ["init_bert_", "init_native_", "init_random_"]


def init_random_(model: AVHubertModel, scheme: InitScheme) -> None:
    """Initialise a freshly built ``model`` with ``scheme`` (native or :data:`BERT`)."""
    if scheme is BERT:
        init_bert_(model)
    else:
        init_native_(model)


def init_native_(model: AVHubertModel) -> None:
    """AV-HuBERT's own scheme (module docstring) on a model built with PyTorch defaults."""
    with torch.no_grad():
        for m in model.feature_extractor_video.resnet.trunk.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
        encoder = model.encoder
        conv = encoder.pos_conv[0]
        _weight_norm_normal_(
            conv, math.sqrt(4.0 / (conv.weight_v.shape[-1] * conv.weight_v.shape[0]))
        )
        for m in encoder.modules():  # fairseq init_bert_params, applied by the encoder to itself
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()


def init_bert_(model: AVHubertModel) -> None:
    """:data:`BERT`, with the weight-normed positional conv's effective weight N(0, 0.02)."""
    bert_init_(model)
    gen = torch.Generator().manual_seed(1)
    conv = model.encoder.pos_conv[0]
    with torch.no_grad():
        conv.weight_v.copy_(torch.randn(conv.weight_v.shape, generator=gen) * 0.02)
        conv.weight_g.copy_(conv.weight_v.norm(dim=(0, 1), keepdim=True))
        conv.bias.zero_()


def _weight_norm_normal_(conv: WeightNormConv1d, std: float) -> None:
    """``v ~ N(0, std)``, ``g = ||v||`` per kernel position (weight norm's own start), bias 0."""
    conv.weight_v.normal_(0.0, std)  # [D, D / groups, K]
    conv.weight_g.copy_(conv.weight_v.norm(dim=(0, 1), keepdim=True))  # [1, 1, K]
    conv.bias.zero_()
