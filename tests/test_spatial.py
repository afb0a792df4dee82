"""Spatial explainers: exact decompositions against the encoders' own rows, Grad-CAM against captum,
and a planted patch found in the original frame after FSFM's face crop."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from featstore.encoders import Clip, load_encoder  # noqa: E402
from featstore.landmarks import MEAN_FACE_68, FaceTracks  # noqa: E402
from featstore.layout import LAST  # noqa: E402
from featstore.spatial import FrameHead, SpatialUnsupportedError, VideoFrames  # noqa: E402
from featstore.spatial.attribution import decompose_mean  # noqa: E402

H, W, T = 240, 320, 18


def face_tracks(n: int, *, centre=(170.0, 118.0), scale: float = 0.55) -> FaceTracks:
    """The mean face, fixed in every frame."""
    pts = (MEAN_FACE_68 - 128.0) * scale + np.array(centre)
    return FaceTracks.from_landmarks(np.repeat(pts[None], n, axis=0), np.ones(n, bool))


@pytest.fixture(scope="module")
def video() -> VideoFrames:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)
    return VideoFrames(indices=np.arange(T), frames=frames, n_frames=T, tracks=face_tracks(T))


def random_head(dim: int, *, seed: int = 1, l2: bool = True, scale: float = 1.0) -> FrameHead:
    rng = np.random.default_rng(seed)
    return FrameHead(weight=scale * rng.standard_normal(dim), bias=0.3, l2_normalize=l2)


def assert_sums_to_rows(maps, head: FrameHead, rows: np.ndarray) -> None:
    """Contributions + constant + bias = the head on the encoder's own rows (float32 forward)."""
    want = head.logits_np(rows)  # [N] reference from encode()
    total = maps.maps.astype(np.float64).sum(axis=(1, 2)) + maps.constant + head.bias
    np.testing.assert_allclose(total, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(maps.logits, want, rtol=0, atol=1e-5)
    assert maps.exact and maps.method == "linear"


# ------------------------------------------------------------------ the maths


@pytest.mark.parametrize("l2", [True, False])
@pytest.mark.parametrize("with_norm", [False, True])
def test_decompose_mean_is_exact(l2: bool, with_norm: bool) -> None:
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((4, 9, 6))
    head = random_head(6, l2=l2)
    norm = None
    m = tokens.mean(axis=1)  # [N, D] reference in numpy
    f = m
    if with_norm:
        norm = torch.nn.LayerNorm(6, eps=1e-6)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, 6)))
            norm.bias.copy_(torch.from_numpy(rng.standard_normal(6)))
        g, b = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
        f = (m - m.mean(1, keepdims=True)) / np.sqrt(m.var(1, keepdims=True) + 1e-6) * g + b
    d = decompose_mean(torch.from_numpy(tokens), head, norm=norm)
    total = d.contributions.sum(1).numpy() + d.constant.numpy() + head.bias
    np.testing.assert_allclose(total, head.logits_np(f), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.logits.numpy(), head.logits_np(f), rtol=0, atol=1e-12)
    assert (np.abs(d.constant.numpy()) > 0).all() == (with_norm and True)


# ------------------------------------------------------------------ exact encoders


@pytest.fixture(scope="module")
def fsfm_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint

    d = tmp_path_factory.mktemp("fsfm")
    return {
        layout: save_tiny_checkpoint(d / f"{layout}/checkpoint.pth", layout=layout)
        for layout in ("fine-tuned", "pre-trained")
    }


@pytest.mark.parametrize("layer", [LAST, 1])
@pytest.mark.parametrize("layout", ["fine-tuned", "pre-trained"])
def test_fsfm_contributions_sum_to_the_stored_row_logit(
    fsfm_ckpts: dict[str, Path], video: VideoFrames, layout: str, layer
) -> None:
    from featstore.crops import crop_face

    enc = load_encoder("fsfm", str(fsfm_ckpts[layout]))
    head = random_head(enc.layer_dims[layer])
    frames = [3, 11, 7]
    maps = enc.spatial(layer).explain(video, frames, head)
    rows = enc.encode([Clip("v", frames=crop_face(video.frames, video.tracks))], [layer])[0][layer]
    assert_sums_to_rows(maps, head, rows[frames])
    assert maps.grid_hw == (7, 7) and list(maps.frames) == frames
    if layer == LAST and layout == "fine-tuned":
        assert np.abs(maps.constant).max() > 1e-3  # fc_norm's bias: a per-frame constant
        assert "fc_norm" in maps.target


def test_mouth_pixels_contributions_sum_to_the_row_logit(video: VideoFrames) -> None:
    from featstore.crops import crop_mouth

    enc = load_encoder("mouth-pixels")
    head = random_head(enc.spec.dim)
    maps = enc.spatial(LAST).explain(video, [0, 9], head)
    rows = enc.encode([Clip("v", frames=crop_mouth(video.frames, video.tracks))], [LAST])[0][LAST]
    assert_sums_to_rows(maps, head, rows[[0, 9]])
    assert maps.grid_hw == (22, 22) and maps.input_hw == (88, 88)


def test_videomae_contributions_sum_to_the_row_logit(tmp_path: Path, video: VideoFrames) -> None:
    from featstore.encoders.tiny import save_tiny_checkpoint

    enc = load_encoder("videomae", str(save_tiny_checkpoint("videomae", tmp_path / "vm")))
    explainer = enc.spatial(LAST)
    assert explainer.context([5], T) == list(range(16))  # the frame's whole window
    head = random_head(enc.layer_dims[LAST])
    frames = [5, 10, 11]  # rows 2, 5, 5
    maps = explainer.explain(video, frames, head)
    rows = enc.encode([Clip("v", frames=video.frames)], [LAST])[0][LAST]
    assert list(maps.rows) == [2, 5, 5]
    assert_sums_to_rows(maps, head, rows[[2, 5, 5]])
    with pytest.raises(Exception, match="outside"):
        explainer.context([16], T)  # past the last whole window


def test_planted_patch_is_found_in_the_full_frame() -> None:
    """A toy FSFM whose mean patch token is the patch's brightness, a probe aligned with it:
    the map peaks on the bright square planted in the frame, after the face crop."""
    from featstore.encoders.fsfm import SPEC, FSFMEncoder, ViTConfig, build_vit

    cfg = ViTConfig(img_size=224, patch_size=32, embed_dim=8, depth=2, num_heads=1, mlp_dim=8)
    vit = build_vit(cfg)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        vit.patch_embed.proj.weight[0] = 1.0 / (3 * 32 * 32)  # channel 0 = mean pixel value
    enc = FSFMEncoder(
        SPEC, vit, cfg, pooling="mean", frames_per_batch=4, checkpoint=None,
        checkpoint_sha256=None, random_init=False, device="cpu", compute_dtype="float32",
    )  # fmt: skip
    n = 3
    tracks = face_tracks(n)
    frames = np.full((n, H, W, 3), 90, np.uint8)
    cx, cy, half = 196, 95, 12  # inside the face box, off its centre
    frames[:, cy - half : cy + half, cx - half : cx + half] = 255
    video = VideoFrames(indices=np.arange(n), frames=frames, n_frames=n, tracks=tracks)
    head = FrameHead(weight=np.eye(8)[0], bias=0.0)
    maps = enc.spatial(2).explain(video, [0, 2], head)
    from featstore.crops import face_boxes

    box = face_boxes(tracks)[0]
    patch_px = (box[2] - box[0]) * 32 / 224  # one patch in frame pixels
    x, y = maps.peaks[0] * np.array([W, H])
    assert abs(x - cx) <= half + patch_px / 2 and abs(y - cy) <= half + patch_px / 2
    assert box[0] < cx - half and cx + half < box[2]  # the square is inside the crop
    np.testing.assert_allclose(maps.peaks[0], maps.peaks[1])


# ------------------------------------------------------------------ Grad-CAM


class GridView(torch.nn.Module):
    """A LayerNorm whose patch tokens pass through ``grid`` laid out as ``[N, D, h, w]``:
    the channel-first layout captum's LayerGradCam averages gradients over."""

    def __init__(self, norm: torch.nn.Module, side: int) -> None:
        super().__init__()
        self.norm, self.side, self.grid = norm, side, torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        cls, patches = y[:, :1], y[:, 1:]
        n, _, d = patches.shape
        g = self.grid(patches.transpose(1, 2).reshape(n, d, self.side, self.side))
        return torch.cat([cls, g.flatten(2).transpose(1, 2)], dim=1)


def captum_cam(forward, module: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    from captum.attr import LayerGradCam

    cam = LayerGradCam(forward, module).attribute(inputs, relu_attributions=True)
    return cam[:, 0].detach().numpy()  # [N, h, w]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    from featstore.encoders.tiny import save_tiny_checkpoint

    path = save_tiny_checkpoint("clip", tmp_path_factory.mktemp("clip") / "clip")
    return load_encoder("clip", str(path))


@pytest.mark.parametrize("layer", [LAST, 1])
def test_clip_gradcam_equals_captum(tiny_clip, video: VideoFrames, layer) -> None:
    pytest.importorskip("captum")
    enc = tiny_clip
    head = random_head(enc.layer_dims[layer], scale=20.0)
    explainer = enc.spatial(layer)
    block = 1 if layer == LAST else 0
    assert explainer.target == f"vision_model.encoder.layers[{block}].layer_norm1"
    frames = [0, 4, 13]
    maps = explainer.explain(video, frames, head)
    # the reference: captum on a copy of the model with the hooked LayerNorm's patch tokens
    # exposed as a channel-first grid
    model = copy.deepcopy(enc.model)
    layer_mod = model.vision_model.encoder.layers[block]
    layer_mod.layer_norm1 = GridView(layer_mod.layer_norm1, 7)

    def forward(px: torch.Tensor) -> torch.Tensor:
        res = model(pixel_values=px, output_hidden_states=layer != LAST)
        return head.logits(res.image_embeds if layer == LAST else res.hidden_states[layer][:, 0])

    pixels = torch.from_numpy(enc.preprocess(video.frames[frames]))
    want = captum_cam(forward, layer_mod.layer_norm1.grid, pixels)
    assert want.max() > 1e-2  # a map with something in it
    np.testing.assert_allclose(maps.maps, want, rtol=0, atol=1e-5 * max(1.0, want.max()))
    np.testing.assert_allclose(maps.logits, forward(pixels).detach().numpy(), atol=1e-5)
    assert maps.method == "gradcam" and not maps.exact


def test_fsfm_cls_gradcam_equals_captum(fsfm_ckpts: dict[str, Path], video: VideoFrames) -> None:
    pytest.importorskip("captum")
    from featstore.crops import crop_face
    from featstore.encoders.fsfm import face_pixels, vit_hidden_states

    enc = load_encoder("fsfm", str(fsfm_ckpts["fine-tuned"]), pooling="cls")
    head = random_head(enc.layer_dims[LAST], scale=20.0)
    maps = enc.spatial(LAST).explain(video, [2, 5], head)
    vit = copy.deepcopy(enc.model)
    vit.blocks[1].norm1 = GridView(vit.blocks[1].norm1, 7)

    def forward(px: torch.Tensor) -> torch.Tensor:
        states = vit_hidden_states(vit, enc.config, px, upto=enc.config.depth)
        return head.logits(vit.fc_norm(states[-1][:, 0]))

    faces = crop_face(video.frames[[2, 5]], video.tracks, indices=[2, 5])
    want = captum_cam(forward, vit.blocks[1].norm1.grid, face_pixels(faces, 224, "cpu"))
    assert want.max() > 1e-2
    np.testing.assert_allclose(maps.maps, want, rtol=0, atol=1e-5 * max(1.0, want.max()))


def test_unsupported_layers_and_encoders(tiny_clip) -> None:
    with pytest.raises(SpatialUnsupportedError, match="layer 0"):
        tiny_clip.spatial(0)
    with pytest.raises(SpatialUnsupportedError, match="no spatial"):
        load_encoder("logfbank").spatial(LAST)


@pytest.fixture(scope="module")
def mouth_encoders(tmp_path_factory: pytest.TempPathFactory):
    from featstore.encoders.autoavsr.tiny import save_tiny_checkpoint as save_autoavsr
    from featstore.encoders.avhubert.tiny import save_tiny_checkpoint as save_avhubert

    d = tmp_path_factory.mktemp("mouth")
    avhubert = save_avhubert(d / "avhubert.pt", seed=1)
    return {
        "avhubert-v": load_encoder("avhubert-v", str(avhubert)),
        "avhubert-av": load_encoder("avhubert-av", str(avhubert)),
        "autoavsr-vsr": load_encoder(
            "autoavsr-vsr", str(save_autoavsr("autoavsr-vsr", d / "v.pth"))
        ),
    }


@pytest.mark.parametrize("name", ["avhubert-v", "avhubert-av", "autoavsr-vsr"])
def test_mouth_gradcam_equals_captum_per_frame(mouth_encoders, video: VideoFrames, name) -> None:
    """Frame t's map: Grad-CAM of z_t on frame t's own trunk activations (the clip runs whole)."""
    pytest.importorskip("captum")
    from featstore.crops import crop_mouth

    enc = mouth_encoders[name]
    rng = np.random.default_rng(5)
    audio = (0.1 * rng.standard_normal(T * 640)).astype(np.float32)
    full = VideoFrames(
        indices=video.indices, frames=video.frames, n_frames=T, tracks=video.tracks, audio=audio
    )
    explainer = enc.spatial(LAST)
    assert explainer.context([3], T) == list(range(T))
    head = random_head(enc.layer_dims[LAST], scale=20.0)
    frames = [2, 9]
    maps = explainer.explain(full, frames, head)
    assert maps.grid_hw == (3, 3) and explainer.target.endswith("trunk.layer4")
    # the reference: captum on the clip's differentiable forward, one target frame at a time
    clip = Clip("v", frames=crop_mouth(video.frames, video.tracks), audio=audio)
    rows = enc.encode([clip], [LAST])[0][LAST]
    np.testing.assert_allclose(maps.logits, head.logits_np(rows[frames]), atol=1e-4)
    for i, t in enumerate(frames):

        def z_t(_unused: torch.Tensor, t: int = t) -> torch.Tensor:
            return head.logits(explainer.forward(clip)[t : t + 1])  # [1]

        want = captum_cam(z_t, explainer.module, torch.zeros(1, 1))[t]  # [h, w] of frame t
        assert want.max() > 1e-3
        np.testing.assert_allclose(maps.maps[i], want, rtol=0, atol=1e-5 * max(1.0, want.max()))


def test_capture_ignores_other_threads() -> None:
    """A service scores with the same module in other threads while one explains."""
    import threading

    from featstore.spatial.attribution import capture

    lin = torch.nn.Linear(3, 2)
    with capture(lin) as box:
        mine = lin(torch.ones(1, 3))
        t = threading.Thread(target=lambda: lin(torch.zeros(5, 3)))
        t.start()
        t.join()
    assert box.output is mine
    lin(torch.ones(4, 3))  # the hook is gone
    assert box.output is mine
