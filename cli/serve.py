"""``featstore serve``: the HTTP scoring service (FastAPI on uvicorn)."""

from __future__ import annotations

import typer

from featstore.cli.errors import user_errors
from featstore.cli.options import store_option


def serve_command(
    store: str = store_option("Store location (opened read-only)."),
    run: list[str] = typer.Option(
        ...,
        "--run",
        "-r",
        metavar="[NAME=]DIR",
        help="Run directory, or NAME=DIR (repeat for several runs).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Require the X-API-Key header to equal this environment variable's value.",
    ),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", help="Largest upload (413)."),
    max_duration_s: float = typer.Option(
        120.0, "--max-duration-s", help="Longest media accepted, from its header (422)."
    ),
    timeout_s: float = typer.Option(120.0, "--timeout-s", help="Per-request time limit (504)."),
    device: str = typer.Option("cpu", "--device", help="torch device for the encoders."),
    checkpoint: list[str] = typer.Option(
        [],
        "--checkpoint",
        metavar="ENCODER=PATH",
        help="ENCODER=PATH: load this checkpoint instead of the one the run recorded.",
    ),
    max_batch: int = typer.Option(
        8, "--max-batch", help="Most clips per micro-batched encoder call (1: no batching)."
    ),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", help="How long a request waits for others to batch with."
    ),
    header_timeout_s: float = typer.Option(
        10.0,
        "--header-timeout-s",
        help="Close a connection whose request headers are not complete this long after it "
        "opens or its last response ends (408; slowloris).",
    ),
    limit_concurrency: int = typer.Option(
        64, "--limit-concurrency", help="Most open connections; requests beyond get 503."
    ),
    backlog: int = typer.Option(
        2048, "--backlog", help="Connections waiting to be accepted (the listen queue)."
    ),
    asd: str | None = typer.Option(
        None,
        "--asd",
        show_default="talknet when its checkpoint is found, else sync",
        help="Active speaker detector that segments uploads (?segment=true): talknet or sync.",
    ),
    asd_checkpoint: str | None = typer.Option(
        None,
        "--asd-checkpoint",
        show_default="pretrain_TalkSet.model in $FEATSTORE_CHECKPOINTS",
        help="TalkNet checkpoint.",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve scores of uploaded and stored videos over HTTP (docs at /docs)."""
    with user_errors():
        from featstore.api.settings import Settings, parse_checkpoints, parse_run
        from featstore.encoders import get_spec
        from featstore.store import open_store
        from featstore.trainers.kinds import load

        specs = tuple(parse_run(r) for r in run)
        settings = Settings(
            store_url=store,
            runs=specs,
            device=device,
            checkpoints=parse_checkpoints(checkpoint),
            api_key_env=api_key_env,
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_duration_s=max_duration_s,
            request_timeout_s=timeout_s,
            max_batch_clips=max_batch,
            max_wait_ms=max_wait_ms,
            header_timeout_s=header_timeout_s,
            limit_concurrency=limit_concurrency,
            backlog=backlog,
            asd=asd,
            asd_checkpoint=asd_checkpoint,
        )
        settings.api_key()
        if asd == "talknet" or asd_checkpoint is not None:  # a missing checkpoint fails now
            from featstore.asd.talknet.weights import find_talknet_checkpoint

            find_talknet_checkpoint(asd_checkpoint)
        open_store(store, mode="r")
        for spec in specs:  # cheap checks first: a typo must not wait for model loading
            for feature in load(spec.path).features:  # any kind, any readable run format
                get_spec(feature.encoder_name)
        import uvicorn

        from featstore.api.app import create_app
        from featstore.api.server import server_config

        app = create_app(settings)
        config = server_config(app, settings, host=host, port=port, log_level=log_level)
    typer.echo(f"serving {len(specs)} run(s) on http://{host}:{port} (docs at /docs)", err=True)
    uvicorn.Server(config).run()
