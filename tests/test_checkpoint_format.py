"""Checkpoint files are recognised from their bytes before anything is loaded (issue 13.2).

The attack: ``torch.load`` hands a TorchScript zip to ``torch.jit.load``, which runs the
archive's code (here a ``__setstate__`` that creates a marker file through
``torch.from_file``) whatever ``pickle_module`` was passed. Every test first shows the
payload is real (``torch.jit.load`` creates the marker) and then that featstore's loaders
refuse the file without creating it, with and without ``--trust-checkpoint``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.*` is deprecated:DeprecationWarning",
    "ignore:'torch.load' received a zip file that looks like a TorchScript:UserWarning",
)
from typer.testing import CliRunner  # noqa: E402

from featstore.cli.main import app  # noqa: E402
from featstore.encoders import CheckpointError, load_encoder  # noqa: E402
from featstore.encoders.checkpoint_format import inspect_checkpoint  # noqa: E402
from featstore.encoders.checkpoints import CHECKPOINT_DIR_ENV, load_checkpoint  # noqa: E402


class MarkerOnLoad(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) creates a file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.touched = torch.zeros(1, dtype=torch.uint8)
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, torch.Tensor, bool]:
        return (self.marker, self.touched, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, torch.Tensor, bool]) -> None:
        self.marker = state[0]
        self.weight = state[2]
        self.training = state[3]
        # shared=True opens the file O_CREAT: loading the archive writes to the disk
        self.touched = torch.from_file(self.marker, True, 1, dtype=torch.uint8)


class Payload:
    """Unpickled with full pickle, writes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def torchscript_file(path: Path, marker: Path) -> Path:
    """A TorchScript archive that creates ``marker`` when loaded; proven to do so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(MarkerOnLoad(str(marker))), str(path))
    assert not marker.exists()
    torch.jit.load(str(path))  # the payload is real: loading runs it
    assert marker.exists()
    marker.unlink()
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


@pytest.fixture
def scripted(tmp_path: Path, marker: Path) -> Path:
    return torchscript_file(tmp_path / "model.pt", marker)


def test_torch_load_would_run_it(scripted: Path, marker: Path) -> None:
    """What featstore guards against: torch.load's own dispatch, whatever unpickler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(scripted, weights_only=False, pickle_module=pickle)
    assert marker.exists()


def test_torchscript_refused_even_when_trusted(scripted: Path, marker: Path) -> None:
    assert inspect_checkpoint(scripted).kind == "torchscript"
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="TorchScript archive") as info:
            load_checkpoint(scripted, trust=trust)
        assert "even with --trust-checkpoint" in str(info.value)
        assert not marker.exists()


def test_every_family_refuses_torchscript(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AV-HuBERT, Auto-AVSR and FSFM files, by path and by default name in the
    checkpoint directory, trusted or not, random init or not (it reads the architecture)."""
    from featstore.encoders.fsfm import DEFAULT_CHECKPOINT

    folder = tmp_path / "checkpoints"
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(folder))
    defaults = {
        "avhubert-av": "self_large_vox_433h.pt",
        "autoavsr-vsr": "LRS3_V_WER19.1.pth",
        "fsfm": DEFAULT_CHECKPOINT,
    }
    for name, default in defaults.items():
        path = torchscript_file(folder / default, marker)
        for checkpoint in (str(path), None):
            for options in ({}, {"trust_checkpoint": True}, {"random_init": True}):
                with pytest.raises(CheckpointError, match="TorchScript"):
                    load_encoder(name, checkpoint, **options)
                assert not marker.exists(), (name, checkpoint, options)


def test_convert_cli_refuses_torchscript(scripted: Path, marker: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for flags in ([], ["--trust-checkpoint"]):
        result = CliRunner().invoke(
            app,
            [
                "encoders",
                "convert",
                "fsfm",
                "--checkpoint",
                str(scripted),
                "--out",
                str(out),
                *flags,
            ],
        )
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "TorchScript" in lines[0]
        assert not marker.exists()
        assert not out.exists()


def _tiny_clip_with_bin(directory: Path, weights: bytes | Path) -> Path:
    """A tiny CLIP checkpoint whose weights are ``pytorch_model.bin`` only."""
    from featstore.encoders.tiny import save_tiny_checkpoint

    path = save_tiny_checkpoint("clip", directory)
    (path / "model.safetensors").unlink()
    target = path / "pytorch_model.bin"
    if isinstance(weights, Path):
        target.write_bytes(weights.read_bytes())
    else:
        target.write_bytes(weights)
    return path


def test_hugging_face_bin_weights(tmp_path: Path, scripted: Path, marker: Path) -> None:
    """A plain torch.save ``pytorch_model.bin`` loads (transformers unpickles it with
    weights_only=True); a TorchScript one is refused before transformers opens it, and
    transformers' own loader would refuse it too."""
    from safetensors.torch import load_file
    from transformers.modeling_utils import load_state_dict

    from featstore.encoders.tiny import save_tiny_checkpoint

    reference = save_tiny_checkpoint("clip", tmp_path / "ref")
    buffer = io.BytesIO()
    torch.save(load_file(str(reference / "model.safetensors")), buffer)
    plain = _tiny_clip_with_bin(tmp_path / "plain", buffer.getvalue())
    rows = load_encoder("clip", str(plain)).model.state_dict()
    expected = load_encoder("clip", str(reference)).model.state_dict()
    assert all(torch.equal(rows[k], expected[k]) for k in expected)

    evil = _tiny_clip_with_bin(tmp_path / "evil", scripted)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a TorchScript archive"):
        load_encoder("clip", str(evil))
    assert not marker.exists()
    with pytest.raises(RuntimeError, match="TorchScript"):
        load_state_dict(str(evil / "pytorch_model.bin"))  # transformers 5 itself
    assert not marker.exists()


def _legacy_tar(path: Path, marker: Path) -> Path:
    """torch < 0.4's tar layout (storages, tensors, pickle), the object a payload."""
    members = {
        "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": pickle.dumps(Payload(marker), protocol=2),
    }
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_legacy_tar_needs_consent(tmp_path: Path, marker: Path) -> None:
    path = _legacy_tar(tmp_path / "old.pt", marker)
    assert inspect_checkpoint(path).kind == "torch-tar"
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # consent: torch.load reads it with full pickle, which runs the payload
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(path, trust=True)
    assert marker.read_text() == "ran"


def test_zip_with_foreign_entries_needs_consent(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "extra.pt"
    torch.save({"model": {"w": torch.arange(3.0)}}, path)
    with zipfile.ZipFile(path, "a") as archive:
        prefix = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{prefix}/extra/hook.py", "print('hi')")
    assert inspect_checkpoint(path).kind == "zip-other"
    with pytest.raises(CheckpointError, match=r"extra/hook\.py"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust=True)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_plain_formats(tmp_path: Path, marker: Path) -> None:
    zipped, legacy = tmp_path / "zip.pt", tmp_path / "legacy.pt"
    state = {"model": OrderedDict(w=torch.randn(2, 3)), "payload": Payload(marker)}
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert inspect_checkpoint(zipped).kind == "torch-zip"
    assert inspect_checkpoint(legacy).kind == "torch-legacy"
    for path in (zipped, legacy):
        torch.testing.assert_close(load_checkpoint(path)["model"]["w"], state["model"]["w"])
    assert not marker.exists()


def test_mmap_default_does_not_change_loading(tmp_path: Path) -> None:
    """torch.load's global mmap setting would make a legacy file fail; featstore passes
    mmap=False."""
    from torch.utils.serialization import config

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    before = config.load.mmap
    config.load.mmap = True
    try:
        assert torch.equal(load_checkpoint(legacy)["w"], torch.ones(2))
    finally:
        config.load.mmap = before


def test_mislabelled_safetensors_is_read_as_safetensors(tmp_path: Path) -> None:
    """A safetensors file named .pth is read with safetensors (no pickle); FSFM accepts it
    as a bare state dict."""
    from safetensors.torch import save_file

    from featstore.encoders.fsfm_tiny import TINY, fsfm_state_dict

    state = {k: v.contiguous() for k, v in fsfm_state_dict(TINY).items()}
    path = tmp_path / "weights.pth"
    save_file(state, str(path))
    assert inspect_checkpoint(path).kind == "safetensors"
    for trust in (False, True):
        loaded = load_checkpoint(path, trust=trust)
        assert loaded.keys() == state.keys()
    enc = load_encoder("fsfm", str(path))
    assert enc.config == TINY and enc.layout == "fine-tuned"  # type: ignore[attr-defined]


def test_unknown_and_damaged_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    no_magic = tmp_path / "plain-pickle.pt"
    no_magic.write_bytes(pickle.dumps({"w": 1}))  # a pickle, but not torch's format
    for path in (garbage, damaged, no_magic):
        assert inspect_checkpoint(path).kind == "unknown"
        for trust in (False, True):
            with pytest.raises(CheckpointError, match="not a checkpoint featstore can read"):
                load_checkpoint(path, trust=trust)
