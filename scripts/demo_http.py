"""Score one clip through the running HTTP API, as a client would (`make demo`, last step).

    python scripts/demo_http.py http://127.0.0.1:8765 CLIP.mp4 DATASET VIDEO_ID

Waits for /readyz, lists the loaded runs, uploads the clip to POST /v1/score
(every loaded run scores it, whatever its kind), prints one line per run and
the full answer of a synchronisation run, then asks for the stored video's
scores under that run (per-frame score lists cut to their first values to keep
the output short). Standard library only.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any


def wait_ready(base: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet, or 503 while the models load
        if time.monotonic() > deadline:
            sys.exit(f"the server at {base} was not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


def upload(base: str, clip: Path) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="file"; filename="{clip.name}"\r\n'.encode(),
            b"Content-Type: video/mp4\r\n\r\n",
            clip.read_bytes(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    request = urllib.request.Request(
        f"{base}/v1/score",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def get(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}{path}", timeout=60) as response:
        return json.load(response)


def shorten(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {
            k: ([*v[:5], "..."] if k == "frame_scores" and len(v) > 5 else shorten(v))
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [shorten(x) for x in doc]
    return doc


def _line(result: dict[str, Any]) -> str:
    p = result["probability"]
    probability = "-" if p is None else f"{p:.3f}"
    return (
        f"  {result['run']:10s} {result['kind']:9s} score {result['score']:+8.3f}  "
        f"P(fake) {probability:>5s}  rank {result['rank_score']:.3f}  {result['label']:4s}  "
        f"{len(result['frame_scores'])} frames, {len(result['segments'])} fake segments  "
        f"[{', '.join(result['features'])}]"
    )


def main(base: str, clip: str, dataset: str, video_id: str) -> None:
    wait_ready(base)
    models = get(base, "/v1/models")["models"]
    print("loaded runs: " + ", ".join(f"{m['name']} ({m['kind']})" for m in models))
    print(f"POST {base}/v1/score  ({clip})")
    doc = upload(base, Path(clip))
    print(
        f"  {doc['duration_s']:.2f} s; P(fake) only for calibrated kinds, rank = sigmoid(2 score)"
    )
    for result in doc["results"]:
        print(_line(result))
    sync = next((r for r in doc["results"] if r["kind"] in ("sync", "syncfree")), doc["results"][0])
    print(f"the {sync['run']} run's answer in full:")
    print(json.dumps(shorten(sync), indent=2))
    path = f"/v1/datasets/{dataset}/videos/{urllib.parse.quote(video_id)}/scores?run={sync['run']}"
    print(f"GET {base}{path}  (the same clip from its stored features)")
    print(json.dumps(shorten(get(base, path)), indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
