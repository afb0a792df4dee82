"""TalkNet-ASD: active speaker detection (Tao et al., 2021) in plain PyTorch.

- ``config``: the architecture's widths (``FULL`` = ``pretrain_TalkSet.model``, ``TINY``);
- ``model``: the network; ``weights``: strict, safe loading of the original checkpoint;
- ``preprocess``: MFCC rows and the demo pipeline's 112x112 grey face crops;
- ``scoring``: the demo's multi-window per-frame speaking scores;
- ``tiny``: random checkpoints in the original format for tests.
"""

from __future__ import annotations

from featstore.asd.talknet.config import FULL, TINY, TalkNetConfig
from featstore.asd.talknet.weights import DEFAULT_CHECKPOINT, LoadedTalkNet, load_talknet

__all__ = ["DEFAULT_CHECKPOINT", "FULL", "TINY", "LoadedTalkNet", "TalkNetConfig", "load_talknet"]
