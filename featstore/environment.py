"""What a bug report needs to know about this installation (``featstore env``).

Versions (read from the installed distributions, so nothing heavy is
imported for them), the compute devices (imports torch), the checkpoint
directory and the Hugging Face cache and what is in them, the ``FEATSTORE_*``
environment variables (secrets masked) and whether a store answers.

>>> report = collect_environment(store="features.zarr")  # doctest: +SKIP
>>> report["store"]["reachable"], report["devices"]["cuda"]["available"]  # doctest: +SKIP
(True, False)
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from featstore import __version__

__all__ = ["ENV_VARS", "PACKAGES", "collect_environment", "env_vars", "store_reachability"]

# Every environment variable featstore reads, and what for (README "Environment variables").
ENV_VARS: dict[str, str] = {
    "FEATSTORE_STORE": "the store of every command that takes --store / URL, when none is given",
    "FEATSTORE_CHECKPOINTS": "where checkpoint files not on the Hugging Face hub are looked up "
    "(default ~/.cache/featstore/checkpoints)",
    "FEATSTORE_CACHE_DIR": "where checkpoint sha256 digests are cached "
    "(default $XDG_CACHE_HOME/featstore or ~/.cache/featstore)",
    "FEATSTORE_GC_FLOOR_S": "the age (seconds) under which gc never removes anything (default 600)",
    "FEATSTORE_CRASH_AT_WRITE": "tests only: make the Nth object write of the process crash",
    "FEATSTORE_API_KEY": "deploy/: the API key, read by `featstore serve --api-key-env "
    "FEATSTORE_API_KEY` (any variable name works)",
    "FEATSTORE_RUN_URL": "deploy/k8s: where the training job uploads its run and the scoring "
    "service fetches it",
}
# Distributions whose versions matter in bug reports (the first seven always shown).
PACKAGES = (
    "torch",
    "transformers",
    "zarr",
    "av",
    "numpy",
    "xarray",
    "dask",
    "distributed",
    "fsspec",
    "s3fs",
    "safetensors",
    "huggingface-hub",
    "scikit-learn",
    "scipy",
    "pandas",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "typer",
    "dlib-bin",
    "opencv-python-headless",
    "silero-vad",
    "tensorboard",
)
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
_HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _masked(name: str, value: str) -> str:
    return "***" if any(word in name.upper() for word in _SECRET_WORDS) else value


def env_vars() -> dict[str, dict[str, Any]]:
    """Every ``FEATSTORE_*`` variable: the known ones (set or not) and any other set."""
    names = sorted(set(ENV_VARS) | {k for k in os.environ if k.startswith("FEATSTORE_")})
    return {
        name: {
            "value": None if name not in os.environ else _masked(name, os.environ[name]),
            "meaning": ENV_VARS.get(name, "not read by featstore (a deployment's own setting?)"),
        }
        for name in names
    }


def _devices() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:  # torch is a dependency; say so rather than fail
        return {"error": f"torch does not import: {exc}"}
    cuda: dict[str, Any] = {
        "available": bool(torch.cuda.is_available()),
        "version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": [],
    }
    if cuda["available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            cuda["devices"].append(
                {
                    "index": i,
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_total_bytes": int(total),
                    "memory_free_bytes": int(free),
                }
            )
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda": cuda,
        "mps": bool(mps is not None and mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _listing(root: Path, *, limit: int = 50) -> dict[str, Any]:
    """A folder's top-level entries with their sizes (the first ``limit``)."""
    out: dict[str, Any] = {"path": str(root), "exists": root.is_dir(), "entries": []}
    if not root.is_dir():
        return out
    entries = sorted(root.iterdir())
    for entry in entries[:limit]:
        size = entry.stat().st_size if entry.is_file() else _tree_bytes(entry)
        out["entries"].append({"name": entry.name, "bytes": size, "dir": entry.is_dir()})
    out["more"] = max(0, len(entries) - limit)
    return out


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _checkpoints() -> dict[str, Any]:
    from featstore.encoders.checkpoints import CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIR

    root = Path(os.environ.get(CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIR)).expanduser()
    return _listing(root)


def _digest_cache() -> str:
    from featstore.encoders.base import sha256_cache_file

    return str(sha256_cache_file())


def _hf_cache() -> dict[str, Any]:
    out: dict[str, Any] = {
        "env": {name: os.environ.get(name) for name in _HF_VARS},
    }
    try:
        from huggingface_hub import constants, scan_cache_dir
    except ImportError as exc:
        return {**out, "error": f"huggingface_hub does not import: {exc}"}
    out["path"] = str(constants.HF_HUB_CACHE)
    try:
        info = scan_cache_dir()
    except Exception as exc:  # CacheNotFound and friends: an empty or missing cache
        return {**out, "repos": [], "note": f"{type(exc).__name__}: {exc}"}
    out["repos"] = [
        {"id": r.repo_id, "type": r.repo_type, "bytes": int(r.size_on_disk)}
        for r in sorted(info.repos, key=lambda r: r.repo_id)
    ]
    return out


def store_reachability(url: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Whether the store at ``url`` opens read-only and lists its datasets within
    ``timeout_s`` (an unreachable object store may otherwise hang)."""
    from featstore.store import open_store

    def probe() -> list[str]:
        return open_store(url, mode="r").datasets()

    start = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        datasets = pool.submit(probe).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        result = {"reachable": False, "error": f"no answer within {timeout_s:g} s"}
    except Exception as exc:  # the report names whatever went wrong
        result = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        result = {"reachable": True, "datasets": datasets}
    finally:
        pool.shutdown(wait=False)
    return {"url": url, **result, "seconds": round(time.perf_counter() - start, 3)}


def collect_environment(
    *, store: str | None = None, devices: bool = True, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Everything above as one JSON-ready dict. ``store``: check that this store answers
    (``store_source`` says where the URL came from is the caller's business)."""
    import featstore

    return {
        "featstore": {"version": __version__, "path": str(Path(featstore.__file__).parent)},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "ffmpeg": _ffmpeg(),
        "devices": _devices() if devices else None,
        "checkpoints": _checkpoints(),
        "checkpoint_digests": _digest_cache(),
        "huggingface": _hf_cache(),
        "env": env_vars(),
        "store": None if store is None else store_reachability(store, timeout_s=timeout_s),
    }


def _ffmpeg() -> dict[str, str] | None:
    """The FFmpeg libraries PyAV was built with."""
    try:
        import av
    except ImportError:
        return None
    versions = getattr(av, "library_versions", {})
    return {name: ".".join(map(str, v)) for name, v in sorted(versions.items())}
