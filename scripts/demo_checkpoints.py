"""Write tiny random checkpoints for the demo (no weights can be downloaded).

    python scripts/demo_checkpoints.py OUT_DIR wav2vec2 clip avhubert fsfm

Each lands in ``OUT_DIR`` laid out like the real checkpoint: a Hugging Face
directory ``OUT_DIR/<name>`` (config, safetensors weights, preprocessor config) for
wav2vec2, clip and videomae, a fairseq ``OUT_DIR/avhubert.pt`` for avhubert, and
FSFM's fine-tuned ``OUT_DIR/FF++_c23_32frames/checkpoint-min_val_loss.pth`` for fsfm
(the default checkpoint's format: ``fc_norm`` and the classifier head), so
``featstore extract --checkpoint`` loads it through the same path as the published
weights. The models are 2 layers, tens of units wide and random: the demo's
features show the pipeline, not what the real encoders can detect.
"""

from __future__ import annotations

import sys
from pathlib import Path

from featstore.encoders import fsfm_tiny
from featstore.encoders.avhubert import tiny as avhubert_tiny
from featstore.encoders.fsfm import DEFAULT_CHECKPOINT as FSFM_CHECKPOINT
from featstore.encoders.tiny import save_tiny_checkpoint


def main(out_dir: str, names: list[str]) -> None:
    for name in names:
        if name == "avhubert":
            path = avhubert_tiny.save_tiny_checkpoint(Path(out_dir) / "avhubert.pt")
        elif name == "fsfm":
            path = fsfm_tiny.save_tiny_checkpoint(Path(out_dir) / FSFM_CHECKPOINT)
        else:
            path = save_tiny_checkpoint(name, Path(out_dir) / name)
        print(f"  tiny random {name} checkpoint: {path}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
