"""Reading deploy/ the way Docker Compose and Kubernetes read it, for the deploy tests.

Compose interpolation (``${VAR:-default}``), Kubernetes ``$(VAR)`` expansion, and the
resolution of a container's ``featstore ...`` / ``dask ...`` argv with the real click
commands (the project's Typer app, distributed's CLI), so a typo in a command or an
option fails here instead of in a container.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SCHEMAS = Path(__file__).parent / "data" / "schemas"

# $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR
_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_K8S_VAR = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset (Compose refuses to start)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string (https://docs.docker.com/compose/how-tos/environment-variables/variable-interpolation/)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?"):
            if unset:
                raise InterpolationError(f"{name}: {arg or 'required'}")
            return str(value)
        return "" if value is None else str(value)

    return _COMPOSE_VAR.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """``interpolate`` applied to every string value of a loaded YAML tree."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """deploy/compose.yaml with YAML merge keys resolved and variables interpolated
    (``env`` stands for the shell environment; defaults apply where it is silent)."""
    return interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


def expand_k8s(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command/args (an unknown name stays as written)."""
    return _K8S_VAR.sub(lambda m: env.get(m["name"], m.group(0)), text)


def k8s_var_refs(text: str) -> list[str]:
    return [m["name"] for m in _K8S_VAR.finditer(text)]


def load_k8s(name: str) -> list[dict[str, Any]]:
    """The documents of one manifest file in deploy/k8s."""
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def k8s_manifests() -> dict[str, list[dict[str, Any]]]:
    """Every manifest file in deploy/k8s (kustomization.yaml apart) -> its documents."""
    return {
        p.name: load_k8s(p.name)
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


def pod_specs(doc: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of a Deployment, Job or DaskCluster (scheduler and workers)."""
    kind = doc["kind"]
    if kind in ("Deployment", "Job"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    elif kind == "DaskCluster":
        for role in ("scheduler", "worker"):
            yield f"{doc['metadata']['name']}/{role}", doc["spec"][role]["spec"]


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


class CommandError(ValueError):
    """An argv that names no command of the CLI."""


@functools.cache
def _featstore_root() -> Any:
    import typer.main

    from featstore.cli.main import app

    return typer.main.get_command(app)


def resolve_featstore(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``featstore SUB... ARGS`` with the project's Typer app, as the CLI does before
    running a command: an unknown command raises ``CommandError``; unknown options, missing
    ones and values their parser refuses raise the CLI's usage error. Returns the command
    path ("train probe") and its parsed parameters. (Typer bundles its own click, so groups
    are told apart by their ``get_command``.)"""
    if not argv or argv[0] != "featstore":
        raise CommandError(f"not a featstore command: {argv}")
    command, args, path = _featstore_root(), list(argv[1:]), []
    while hasattr(command, "get_command"):
        if not args:
            raise CommandError(f"featstore {' '.join(path)}: a sub-command is missing")
        name = args.pop(0)
        sub = command.get_command(command.context_class(command), name)
        if sub is None:
            raise CommandError(f"featstore {' '.join([*path, name])}: no such command")
        command, path = sub, [*path, name]
    context = command.make_context(" ".join(path), args)
    return " ".join(path), dict(context.params)


def resolve_dask(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``dask scheduler|worker ARGS`` with distributed's own click commands."""
    from distributed.cli import dask_scheduler, dask_worker

    commands = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}
    if len(argv) < 2 or argv[0] != "dask" or argv[1] not in commands:
        raise CommandError(f"not a dask scheduler/worker command: {argv}")
    context = commands[argv[1]].make_context(argv[1], list(argv[2:]))
    return argv[1], dict(context.params)


def option(argv: list[str], name: str) -> str:
    """The value after ``name`` in an argv (``--port 8000``); KeyError when absent."""
    for i, token in enumerate(argv[:-1]):
        if token == name:
            return argv[i + 1]
    raise KeyError(f"{name} not in {argv}")
