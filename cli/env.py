"""``featstore env``: versions, devices, caches, settings and the store, for bug reports."""

from __future__ import annotations

import json
from typing import Any

import typer

from featstore.cli.errors import user_errors
from featstore.cli.options import STORE_ENV, env_store


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def env_command(
    store: str | None = typer.Option(
        None,
        "--store",
        "-s",
        metavar="URL",
        show_default=f"${STORE_ENV}, when set",
        help="Check that this store answers.",
    ),
    devices: bool = typer.Option(
        True, "--devices/--no-devices", help="Look for CUDA / MPS devices (imports torch)."
    ),
    timeout_s: float = typer.Option(
        10.0, "--timeout-s", help="How long to wait for the store to answer."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Versions, devices, checkpoint and Hugging Face caches, FEATSTORE_* settings and
    whether the store answers: paste the output into bug reports."""
    source = "--store" if store else STORE_ENV if env_store() else None
    url = store or env_store()
    with user_errors():
        from featstore.cli.encoders import weights_status
        from featstore.encoders import specs
        from featstore.environment import collect_environment

        report = collect_environment(store=url, devices=devices, timeout_s=timeout_s)
        report["encoders"] = {
            name: {"default_checkpoint": spec.default_checkpoint, "weights": weights_status(spec)}
            for name, spec in specs().items()
        }
    if report["store"] is not None:
        report["store"]["source"] = source
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(report)


def _print(r: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"featstore {r['featstore']['version']} ({r['featstore']['path']})")
    py = r["python"]
    echo(f"python {py['version']} ({py['implementation']}, {py['executable']})")
    echo(f"platform {r['platform']}")
    echo("\npackages:")
    for name, version in r["packages"].items():
        echo(f"  {name:<24} {version or 'not installed'}")
    if r["ffmpeg"]:
        echo("  ffmpeg (PyAV)            " + ", ".join(f"{k} {v}" for k, v in r["ffmpeg"].items()))
    echo("\ndevices:")
    dev = r["devices"]
    if dev is None:
        echo("  not checked (--no-devices)")
    elif "error" in dev:
        echo(f"  {dev['error']}")
    else:
        cuda = dev["cuda"]
        if cuda["available"]:
            echo(f"  CUDA {cuda['version']} (cuDNN {cuda['cudnn']})")
            for d in cuda["devices"]:
                echo(
                    f"  cuda:{d['index']} {d['name']} (compute {d['capability']}): "
                    f"{_gib(d['memory_free_bytes'])} free of {_gib(d['memory_total_bytes'])}"
                )
        else:
            built = f" (torch built for CUDA {cuda['version']})" if cuda["version"] else ""
            echo(f"  CUDA: not available{built}")
        echo(f"  MPS: {'available' if dev['mps'] else 'not available'}")
        echo(f"  CPU: {dev['cpu_count']} cores, torch uses {dev['cpu_threads']} threads")
    ck = r["checkpoints"]
    echo(f"\ncheckpoint directory: {ck['path']}" + ("" if ck["exists"] else " (does not exist)"))
    for e in ck["entries"]:
        echo(f"  {e['name']}{'/' if e['dir'] else ''}  {_size(e['bytes'])}")
    if ck.get("more"):
        echo(f"  ... {ck['more']} more")
    echo(f"checkpoint digests cached in: {r['checkpoint_digests']}")
    echo("encoders' default weights:")
    for name, e in r["encoders"].items():
        echo(
            f"  {name:<16} {e['weights']}"
            + (f" ({e['default_checkpoint']})" if e["default_checkpoint"] else "")
        )
    hf = r["huggingface"]
    echo(f"\nHugging Face cache: {hf.get('path', '?')}")
    for name, value in hf["env"].items():
        if value is not None:
            echo(f"  {name}={value}")
    for repo in hf.get("repos", []):
        echo(f"  {repo['type']} {repo['id']}  {_size(repo['bytes'])}")
    if hf.get("note") or hf.get("error"):
        echo(f"  ({hf.get('note') or hf.get('error')})")
    echo("\nenvironment:")
    for name, v in r["env"].items():
        value = "(unset)" if v["value"] is None else v["value"]
        echo(f"  {name}={value}\n      {v['meaning']}")
    echo("")
    st = r["store"]
    if st is None:
        echo(f"store: none given (--store or {STORE_ENV})")
    elif st["reachable"]:
        names = ", ".join(st["datasets"]) or "none"
        echo(
            f"store {st['url']} (from {st['source']}): reachable in {st['seconds']} s; datasets: {names}"
        )
    else:
        echo(f"store {st['url']} (from {st['source']}): NOT reachable: {st['error']}")
