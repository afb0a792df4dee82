"""A writer process for the store's fault-injection tests (run as a script).

    python tests/store_fault_worker.py URL WORKER N_VIDEOS

Writes videos ``w<WORKER>/v<i>`` with deterministic rows (``synthetic_video``)
for layers 0 (32 wide) and ``last`` (16 wide), then prints ``done``. Killed
at the Nth object write when ``FEATSTORE_CRASH_AT_WRITE`` says so.
"""

from __future__ import annotations

import sys


def video_ids(worker: int, n_videos: int) -> list[str]:
    return [f"w{worker}/v{i:03d}" for i in range(n_videos)]


def video_length(video_id: str) -> int:
    worker, index = video_id[1:].split("/v")
    return 17 + (int(index) * 37 + int(worker) * 11) % 300


def main(argv: list[str]) -> None:
    from featstore.store import EncoderInfo, open_store
    from featstore.synthetic import write_synthetic

    url, worker, n_videos = argv[0], int(argv[1]), int(argv[2])
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
    store = open_store(url, mode="a")
    ids = video_ids(worker, n_videos)
    lengths = [video_length(v) for v in ids]
    # Parts of one inner chunk (512 rows): 2-4 videos per part, many commits.
    write_synthetic(store, "ds", info, ids, lengths, target_part_bytes=512 * 64)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
