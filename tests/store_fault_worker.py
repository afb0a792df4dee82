"""A writer process for the store's fault-injection tests (run as a script).

    python tests/store_fault_worker.py URL WORKER N_VIDEOS [LAYERS]

Writes videos ``w<WORKER>/v<i>`` of encoder ``tiny`` with deterministic rows
(``synthetic_video``) for ``LAYERS`` (comma-separated, default ``0,last``;
widths in ``DIMS``), records one failure (``w<WORKER>/bad``), then prints
``done``. Dies at the Nth object write when ``FEATSTORE_CRASH_AT_WRITE=N``.
"""

from __future__ import annotations

import sys

DIMS = {0: 32, "last": 16, 3: 8, 5: 24}


def video_ids(worker: int, n_videos: int) -> list[str]:
    return [f"w{worker}/v{i:03d}" for i in range(n_videos)]


def video_length(video_id: str) -> int:
    worker, index = video_id[1:].split("/v")
    return 17 + (int(index) * 37 + int(worker) * 11) % 300


def parse_layers(text: str) -> list[int | str]:
    return [int(x) if x.isdigit() else x for x in text.split(",")]


def main(argv: list[str]) -> None:
    from featstore.store import EncoderInfo, open_store
    from featstore.synthetic import write_synthetic

    url, worker, n_videos = argv[0], int(argv[1]), int(argv[2])
    layers = parse_layers(argv[3] if len(argv) > 3 else "0,last")
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={x: DIMS[x] for x in layers})
    store = open_store(url, mode="a")
    ids = video_ids(worker, n_videos)
    # Parts of one inner chunk (512 rows): 2-4 videos per part, many commits.
    write_synthetic(
        store, "ds", info, ids, [video_length(v) for v in ids], target_part_bytes=512 * 2 * 8
    )
    with store.writer("ds", info) as writer:
        writer.fail(f"w{worker}/bad", ValueError("moov atom not found"))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
