"""The jet-image taggers: the tutorial CNN's exact architecture, the modern CNN, and both taggers' contract
(training, scores, weights, MLflow round trip, ONNX parity); plus a short fit on the real CMS images."""
from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from keras_helpers import tiny_config

from wtag.dataset import Split, Standardization, stratified_split
from wtag.errors import WtagError
from wtag.taggers import build_tagger
from wtag.taggers.cnn import CNNTagger, TutorialCNNTagger

NAMES = ("cnn_tutorial", "cnn")


@pytest.fixture(params=NAMES)
def trained(request: pytest.FixtureRequest, keras_trained) -> tuple:
    return keras_trained(request.param)


def _layers(name: str) -> list[keras.layers.Layer]:
    tagger = build_tagger(name, tiny_config(), Standardization(image_scale=300.0))
    return tagger._build()[0].layers


def test_identity() -> None:
    for cls in (TutorialCNNTagger, CNNTagger):
        assert (cls.family, cls.inputs, cls.flavor) == ("cnn", ("images",), "keras")
    assert (TutorialCNNTagger.name, CNNTagger.name) == NAMES


def test_tutorial_architecture_layer_by_layer() -> None:
    described = []
    for layer in _layers("cnn_tutorial")[1:]:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D):
            described.append(("conv", config["filters"], config["kernel_size"], config["activation"],
                              config["padding"]))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            described.append(("pool", config["pool_size"]))
        elif isinstance(layer, keras.layers.Dense):
            described.append(("dense", config["units"], config["activation"]))
        elif isinstance(layer, keras.layers.Dropout):
            described.append(("dropout", config["rate"]))
        else:
            described.append((type(layer).__name__,))
    assert described == [
        ("Rescaling",),
        ("conv", 8, (11, 11), "tanh", "same"), ("pool", (2, 2)),
        ("conv", 8, (3, 3), "tanh", "same"), ("pool", (3, 3)),
        ("conv", 8, (3, 3), "tanh", "same"), ("pool", (3, 3)),
        ("Flatten",), ("dropout", 0.2), ("dense", 20, "tanh"), ("dropout", 0.1), ("dense", 1, "sigmoid"),
    ]


def test_modern_cnn_is_small() -> None:
    tagger = build_tagger("cnn", tiny_config(), Standardization(image_scale=300.0))
    assert tagger._build()[0].count_params() < 100_000


def test_needs_an_image_scale() -> None:
    for name in NAMES:
        with pytest.raises(WtagError, match="image_scale"):
            build_tagger(name, tiny_config(), Standardization(hl_mean=(0.0,), hl_std=(1.0,)))._build()


@pytest.mark.slow
def test_scores_scale_with_raw_pixel_pt(trained: tuple) -> None:
    """The graph divides by image_scale itself, so it must see raw GeV: rescaled images score differently."""
    tagger, val, _ = trained
    images = val.images[:50]
    assert np.max(np.abs(tagger.predict({"images": images}) - tagger.predict({"images": images / 300.0}))) > 1e-3


@pytest.mark.slow
def test_cnn_learns_real_cms_images(shared_data) -> None:
    """A few epochs on part of the tutorial's real CMS images already separate W from QCD jets."""
    with h5py.File(shared_data / "cms2011_tt_qcd_jet_images.h5", "r") as f:
        signal, background = f["TT"][:600], f["QCD"][:900]
    images = np.concatenate([signal, background]).astype(np.float32)
    label = np.concatenate([np.ones(len(signal)), np.zeros(len(background))]).astype(np.int64)
    index = stratified_split(label, seed=3, val_fraction=0.25, test_fraction=0.25)
    splits = {name: Split(label=label[i], weight=np.ones(len(i), np.float32), msd=np.zeros(len(i)),
                          pt=np.zeros(len(i)), images=images[i]) for name, i in index.items()}
    tagger = build_tagger("cnn", tiny_config(epochs=4, batch_size=64, learning_rate=1e-3),
                          Standardization.fit(splits["train"]))
    tagger.fit(splits["train"], splits["val"])
    test = splits["test"]
    assert roc_auc_score(test.label, tagger.predict(test.inputs())) > 0.85
