"""Random initialisation of an encoder's architecture: its own scheme, or BERT-style.

The paper's random baselines (Supp. D) are the pre-trained models' architectures with
untrained weights. Which untrained weights matters (the paper finds random features
far above chance), so the default is each architecture's own initialisation, as its
original code constructs the model from scratch: every family declares it as an
:class:`InitScheme` on its spec (``EncoderSpec.init_scheme``: what it is and where the
original code does it) and implements it beside its model.

Loader option ``random_init_scheme`` (with ``random_init=True`` only):

- ``"native"`` (default): the family's own scheme (e.g. ``avhubert-fairseq``);
- ``"bert"``: :data:`BERT`, the one BERT-style scheme featstore applied to every
  encoder before (LayerNorm/BatchNorm 1/0, Linear/Embedding/Conv N(0, 0.02)), kept as
  a named option.

The concrete scheme's name is recorded with the features (``EncoderInfo.extra``:
``random_init_scheme``, ``random_init_seed``). Both are seeded (:data:`SEED`, through
:func:`seeded`), so every worker of a distributed extraction builds the same weights.

This module is torch-free at import (the specs declare their schemes at import).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from featstore.encoders.base import EncoderSpec

__all__ = [
    "BERT",
    "CHOICES",
    "NATIVE",
    "OPTION",
    "SEED",
    "InitScheme",
    "bert_init_",
    "rebuild_options",
    "resolve_scheme",
    "seeded",
]

OPTION = "random_init_scheme"
NATIVE = "native"
CHOICES = (NATIVE, "bert")
SEED = 0
"""Seed of every random initialisation (recorded as ``random_init_seed``)."""


@dataclass(frozen=True)
class InitScheme:
    """How an architecture's weights are initialised, declared before anything is built.

    ``rules``: ``(which parameters, how)`` pairs in words and formulas, shown by
    ``featstore encoders show``. ``source``: the original code that does it.
    """

    name: str  # recorded as random_init_scheme, e.g. "avhubert-fairseq"
    summary: str
    source: str
    rules: tuple[tuple[str, str], ...]


BERT = InitScheme(
    name="bert",
    summary="one BERT-style scheme for every architecture (featstore's former default)",
    source="featstore (BERT's init: Devlin et al. 2019; fairseq init_bert_params)",
    rules=(
        ("Linear, Embedding, Conv1d/2d/3d weights", "N(0, 0.02)"),
        ("their biases", "0"),
        ("weight-normed convolutions", "effective weight N(0, 0.02) (g = ||v||)"),
        ("LayerNorm, GroupNorm, BatchNorm", "weight 1, bias 0 (running mean 0, var 1)"),
        ("top-level free parameters (CLS token, position embeddings)", "N(0, 0.02)"),
        (
            "anything else (PReLU slopes, free parameters inside submodules)",
            "as the model's constructor leaves them",
        ),
    ),
)


def resolve_scheme(
    spec: EncoderSpec, options: Mapping[str, Any], *, random_init: bool
) -> InitScheme | None:
    """The scheme a load asks for: None without ``random_init``; else the spec's own
    (``random_init_scheme="native"``, the default) or :data:`BERT` (``"bert"``).

    Raises :class:`~featstore.encoders.base.EncoderError` for another value, or for the
    option given without ``random_init`` (it would silently do nothing).
    """
    from featstore.encoders.base import EncoderError

    choice = options.get(OPTION)
    if choice is not None and choice not in CHOICES:
        raise EncoderError(
            f"encoder {spec.name}: {OPTION} must be one of {', '.join(CHOICES)}, got {choice!r}"
        )
    if not random_init:
        if choice is not None:
            raise EncoderError(
                f"encoder {spec.name}: {OPTION} applies only with random_init (--random-init)"
            )
        return None
    if choice == "bert":
        return BERT
    if spec.init_scheme is None:
        raise EncoderError(f"encoder {spec.name} has no weights to initialise")
    return spec.init_scheme


def rebuild_options(
    spec: EncoderSpec, *, random_init: bool, extra: Mapping[str, Any]
) -> dict[str, str]:
    """Loader options that rebuild the random weights stored features were made with.

    ``extra``: the stored ``EncoderInfo.extra``. Features stored before schemes were
    recorded (random init, no ``random_init_scheme``) were made BERT-style, featstore's
    only scheme then. For scoring new videos with a model trained on stored random
    features (the API) or resuming their extraction.

    >>> rebuild_options(spec, random_init=True, extra={})  # doctest: +SKIP
    {'random_init_scheme': 'bert'}
    """
    from featstore.encoders.base import EncoderError

    if not random_init:
        return {}
    name = extra.get(OPTION, BERT.name)
    if name == BERT.name:
        return {OPTION: "bert"}
    if spec.init_scheme is not None and name == spec.init_scheme.name:
        return {}
    raise EncoderError(
        f"encoder {spec.name}: stored features used random init scheme {name!r}, which this "
        f"featstore cannot rebuild (it knows {spec.init_scheme.name if spec.init_scheme else 'none'}"
        f" and {BERT.name})"
    )


@contextlib.contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Run model construction and initialisation from torch's CPU generator seeded with
    ``seed``, restoring the caller's random state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def bert_init_(module: torch.nn.Module, *, std: float = 0.02, seed: int = SEED) -> None:
    """:data:`BERT`: Linear/Embedding/Conv N(0, std), biases 0, norms 1/0, in place."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear | nn.Embedding | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                weight = torch.randn(m.weight.shape, generator=gen) * std
                if parametrize.is_parametrized(m, "weight"):
                    # weight norm (wav2vec2's positional conv): assigning goes through the
                    # parametrization's right_inverse, so the effective weight is ``weight``
                    m.weight = weight.to(m.weight.dtype)
                else:
                    m.weight.copy_(weight)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(
                m, nn.LayerNorm | nn.GroupNorm | nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
            ):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
        for name, p in module.named_parameters(recurse=True):
            # parametrizations (weight norm) and free parameters (e.g. masked_spec_embed)
            if "." not in name and p.dim() >= 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
