"""The scikit-learn estimator over the probe, checked with scikit-learn's own utilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp
from sklearn.base import clone, is_classifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from featstore.trainers.estimator import ProbeClassifier
from featstore.trainers.probe import ProbeConfig, ProbeError

FAST = {"max_epochs": 15, "lr": 0.05, "batch_videos": 4}


@pytest.fixture(scope="module")
def videos():
    """48 videos of 8-dim frames; fakes carry a planted direction on a few frames."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(8)
    X, y = [], []
    for i in range(48):
        t = int(rng.integers(12, 30))
        x = rng.standard_normal((t, 8)).astype(np.float32)
        if i % 2:
            lo = int(rng.integers(0, t - 5))
            x[lo : lo + 5] += 2.5 * direction
        X.append(x)
        y.append(i % 2)
    return X, np.array(y)


def test_params_are_the_probe_config_and_clone_works():
    clf = ProbeClassifier(lr=0.01, validation_fraction=0.2)
    assert is_classifier(clf)
    params = clf.get_params()
    assert params["lr"] == 0.01 and params["validation_fraction"] == 0.2
    defaults = ProbeClassifier().probe_config()
    assert defaults == ProbeConfig()  # the authors' defaults, nothing else
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    twin.set_params(max_epochs=3)
    assert twin.max_epochs == 3 and clf.max_epochs == 100
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(epochs=3)


def test_fit_scores_like_an_independent_recomputation(videos):
    X, y = videos
    clf = ProbeClassifier(**FAST).fit(X, y)
    assert clf.coef_.shape == (1, 8) and clf.n_features_in_ == 8
    assert list(clf.classes_) == [0, 1] and len(clf.history_) == 15
    s = clf.decision_function(X)
    # s = logsumexp_t (w . x_t / |x_t| + b), recomputed with numpy/scipy
    w, b = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
    expected = [logsumexp((x / np.linalg.norm(x, axis=1, keepdims=True)) @ w + b) for x in X]
    assert s == pytest.approx(expected, rel=1e-4, abs=1e-4)
    proba = clf.predict_proba(X)
    assert proba.shape == (48, 2)
    assert proba[:, 1] == pytest.approx(expit(2 * np.asarray(expected)), rel=1e-4, abs=1e-6)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert list(clf.predict(X)) == list((s > 0).astype(int))
    assert roc_auc_score(y, s) > 0.9  # the planted direction is found
    assert clf.score(X, y) == pytest.approx(np.mean(clf.predict(X) == y))
    frames = clf.frame_scores(X[:2])
    assert [f.shape for f in frames] == [(len(X[0]),), (len(X[1]),)]
    assert logsumexp(frames[1]) == pytest.approx(s[1], rel=1e-4, abs=1e-4)


def test_default_fit_is_the_authors_loop(videos):
    """Defaults: the authors' loop (seed 43, nn.Linear, Adam lr 1e-3, a shuffled DataLoader of
    one video per step), written out with autograd here: the same weights after 3 epochs."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    X, y = videos
    clf = ProbeClassifier(max_epochs=3).fit(X, y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(43)
        head = torch.nn.Linear(8, 1)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        for _ in range(3):
            for (i,) in DataLoader(range(len(X)), batch_size=1, shuffle=True):
                phi = F.normalize(torch.from_numpy(X[int(i)]), dim=-1)  # [T, 8]
                s = torch.logsumexp(head(phi)[:, 0], dim=0)
                loss = F.cross_entropy(torch.stack([-s, s])[None], torch.tensor([int(y[int(i)])]))
                opt.zero_grad()
                loss.backward()
                opt.step()
    np.testing.assert_allclose(clf.coef_[0], head.weight.detach()[0].numpy(), rtol=0, atol=1e-6)
    assert clf.intercept_[0] == pytest.approx(float(head.bias.detach()[0]), abs=1e-6)


def test_options_reach_the_probe(videos):
    """batch_videos / scale_lr / center_bias: the fit is fit_probe's with the same options."""
    from featstore.trainers.probe import fit_probe
    from featstore.trainers.sources import ArraySource

    X, y = videos
    options = {"max_epochs": 3, "batch_videos": 4, "scale_lr": False, "center_bias": True}
    clf = ProbeClassifier(**options).fit(X, y)
    assert clf.probe_config() == ProbeConfig(**options)
    direct = fit_probe(ArraySource(X, y), None, ProbeConfig(**options))
    np.testing.assert_array_equal(clf.coef_[0], direct.params.w)
    assert clf.intercept_[0] == np.float32(direct.params.b)
    default = ProbeClassifier(max_epochs=3).fit(X, y)
    assert not np.allclose(default.coef_, clf.coef_)  # the options changed the fit


def test_cross_val_score_and_grid_search_on_lists_of_videos(videos):
    X, y = videos
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(ProbeClassifier(**FAST), X, y, cv=cv, scoring="roc_auc")
    assert scores.shape == (3,) and scores.mean() > 0.8
    search = GridSearchCV(
        ProbeClassifier(**FAST), {"l2_normalize": [True, False]}, cv=cv, scoring="roc_auc"
    ).fit(X, y)
    assert search.best_params_["l2_normalize"] in (True, False)
    assert search.best_estimator_.coef_.shape == (1, 8)


def test_string_labels_and_validation(videos):
    X, y = videos
    names = np.where(y == 1, "spoof", "bona-fide")  # classes_ sorted: positive = "spoof"
    clf = ProbeClassifier(**FAST, patience=3, validation_fraction=0.25).fit(X, names)
    assert list(clf.classes_) == ["bona-fide", "spoof"]
    assert set(clf.predict(X)) <= {"bona-fide", "spoof"}
    assert all(h.val_loss is not None for h in clf.history_)
    assert 1 <= clf.best_epoch_ <= len(clf.history_)
    explicit = ProbeClassifier(**FAST).fit(X[:36], y[:36], X_val=X[36:], y_val=y[36:])
    assert all(h.val_auc is not None for h in explicit.history_)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda X, y: ProbeClassifier().fit(np.zeros((4, 8)), [0, 1, 0, 1]), "list of per-video"),
        (lambda X, y: ProbeClassifier().fit(X, np.zeros(len(X))), "exactly two classes"),
        (lambda X, y: ProbeClassifier(lr=-1).fit(X, y), "lr must be a positive"),
        (lambda X, y: ProbeClassifier(validation_fraction=1.5).fit(X, y), r"\(0, 1\)"),
        (lambda X, y: ProbeClassifier().fit(X, y[:-1]), "one label per video"),
    ],
)
def test_bad_input_is_a_probe_error(videos, call, match):
    X, y = videos
    with pytest.raises(ProbeError, match=match):
        call(X, y)


def test_unfitted_and_wrong_width(videos):
    from sklearn.exceptions import NotFittedError

    X, y = videos
    with pytest.raises(NotFittedError):
        ProbeClassifier().decision_function(X)
    clf = ProbeClassifier(**FAST).fit(X, y)
    with pytest.raises(ProbeError, match="fit on 8"):
        clf.predict([np.zeros((3, 5), np.float32)])
