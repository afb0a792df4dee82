"""Write tiny random Hugging Face checkpoints for the demo (no weights can be downloaded).

    python scripts/demo_checkpoints.py OUT_DIR wav2vec2 clip avhubert

Each lands in ``OUT_DIR/<name>`` laid out like the real checkpoint: a Hugging
Face directory (config, safetensors weights, preprocessor config) for wav2vec2,
clip and videomae, a fairseq ``.pt`` file for avhubert, so ``featstore extract
--checkpoint`` loads it through the same path as the published weights. The
models are 2 layers, tens of units wide and random: the demo's features show
the pipeline, not what the real encoders can detect.
"""

from __future__ import annotations

import sys
from pathlib import Path

from featstore.encoders.avhubert import tiny as avhubert_tiny
from featstore.encoders.tiny import save_tiny_checkpoint


def main(out_dir: str, names: list[str]) -> None:
    for name in names:
        if name == "avhubert":
            path = avhubert_tiny.save_tiny_checkpoint(Path(out_dir) / "avhubert.pt")
        else:
            path = save_tiny_checkpoint(name, Path(out_dir) / name)
        print(f"  tiny random {name} checkpoint: {path}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
