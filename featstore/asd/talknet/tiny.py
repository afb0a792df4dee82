"""Random TalkNet-ASD checkpoints in the original format, for tests and demos only.

:func:`talknet_state_dict` gives what ``torch.save(talkNet.state_dict())`` writes in the
original code: the ``model.*`` keys of ``talkNetModel`` and the loss heads
``lossAV.FC.*``, ``lossA.FC.*``, ``lossV.FC.*``. Weights are drawn from one seeded
generator in key order (so the same seed gives the same file on any machine), scaled so
that activations stay of order one: conv / linear weights N(0, 1 / fan_in), norms near
1 / 0, running variances in [0.5, 1.5]. With :data:`~featstore.asd.talknet.config.FULL`
the shapes are those of ``pretrain_TalkSet.model``; :data:`TINY` is for fast tests.

>>> path = save_tiny_checkpoint(tmp / "talknet.model")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.asd.talknet.config import TINY, TalkNetConfig

__all__ = ["save_tiny_checkpoint", "talknet_state_dict"]


def talknet_state_dict(config: TalkNetConfig = TINY, *, seed: int = 0) -> dict[str, Any]:
    """A random state dict with the original key names for ``config``."""
    import torch

    from featstore.asd.talknet.model import TalkNet
    from featstore.asd.talknet.weights import checkpoint_key

    gen = torch.Generator().manual_seed(seed)
    shapes = {checkpoint_key(k): v.shape for k, v in TalkNet(config).state_dict().items()}
    d = 2 * config.embed_dim
    shapes["lossA.FC.weight"] = shapes["lossV.FC.weight"] = torch.Size([2, d // 2])
    shapes["lossA.FC.bias"] = shapes["lossV.FC.bias"] = torch.Size([2])
    state: dict[str, Any] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            state[key] = torch.tensor(1000)
        elif name == "running_var":
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif name in ("running_mean", "bias", "beta", "in_proj_bias"):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif name == "gamma" or len(shape) == 1:  # norm scales, PReLU slopes
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            if ".net.3." in key and "visualTCN" in key:  # PReLU: a slope, not a scale
                state[key] = 0.25 + 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1:].numel()
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
    return state


def save_tiny_checkpoint(
    path: str | Path, *, config: TalkNetConfig = TINY, seed: int = 0, prefix: str = ""
) -> Path:
    """Write a random original-format checkpoint to ``path``; return it.

    ``prefix="module."`` writes the keys as a ``DataParallel`` model saves them.
    """
    import torch

    state = {prefix + k: v for k, v in talknet_state_dict(config, seed=seed).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
