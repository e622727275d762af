"""MATLAB-style data stores and the data dlqnb generates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlqnb import DataError
from dlqnb.data.datastores import (
    augmented_image_datastore,
    digits_data_dir,
    image_data_augmenter,
    image_datastore,
    imtile,
    merch_data_dir,
    split_each_label,
)
from dlqnb.data.synthetic import MERCH_CLASSES


def make_folder(root: Path, counts: dict[str, int], size=(10, 12)) -> Path:
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((*size, 3), i * 10 % 255, dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:02d}.png")
    return root


def test_labels_from_folders_and_order(tmp_path):
    store = image_datastore(make_folder(tmp_path, {"b": 2, "a": 3}))
    assert store.class_names == ("a", "b")
    assert store.labels == ("a", "a", "a", "b", "b")
    assert store.count_each_label()["Count"].tolist() == [3, 2]
    assert store.read(0).shape == (10, 12, 3)


def test_split_each_label_like_matlab(tmp_path):
    store = image_datastore(make_folder(tmp_path, {c: 15 for c in "abcde"}))
    first, second = split_each_label(store, 0.7, seed=3)
    assert (len(first), len(second)) == (55, 20)  # 10.5 rounds to 11 per label
    assert first.count_each_label()["Count"].tolist() == [11] * 5
    assert not set(first.files) & set(second.files)
    again, _ = split_each_label(store, 0.7, seed=3)
    other, _ = split_each_label(store, 0.7, seed=4)
    assert again.files == first.files and other.files != first.files
    ordered, _ = split_each_label(store, 0.7, randomized=False)
    assert [p.name for p in ordered.files[:11]] == [f"{i:02d}.png" for i in range(11)]


def test_non_images_are_skipped_with_one_warning(tmp_path):
    folder = make_folder(tmp_path, {"a": 2})
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "a" / "labels.csv").write_text("x")
    with pytest.warns(UserWarning, match="skipped 2 files.*(notes.txt|labels.csv)"):
        store = image_datastore(folder)
    assert len(store) == 2


def test_corrupt_image_error_names_the_file(tmp_path):
    folder = make_folder(tmp_path, {"a": 1})
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    store = image_datastore(folder)
    index = [p.name for p in store.files].index("broken.png")
    with pytest.raises(DataError, match="broken.png"):
        store.read(index)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_folders(tmp_path, kind):
    folder = tmp_path / "nothing"
    if kind == "empty":
        folder.mkdir()
    with pytest.raises(DataError, match="nothing"):
        image_datastore(folder)


def test_augmentation_stays_within_its_bounds(tmp_path):
    folder = tmp_path / "one" / "x"
    folder.mkdir(parents=True)
    pixels = np.zeros((50, 50, 3), dtype=np.uint8)
    pixels[25, 25] = 255  # one bright pixel to follow
    Image.fromarray(pixels).save(folder / "dot.png")
    augmenter = image_data_augmenter(rand_x_reflection=True, rand_x_translation=(-5, 5), rand_y_translation=(-3, 3))
    data = augmented_image_datastore((50, 50), image_datastore(tmp_path / "one"), data_augmentation=augmenter)
    positions = set()
    for epoch in range(60):
        data.set_epoch(epoch)
        image, label = data[0]
        y, x = np.unravel_index(int(image[0].argmax()), (50, 50))
        positions.add((int(y), int(x)))
        assert label == 0 and image.shape == (3, 50, 50)
    xs = {x for _, x in positions} | {49 - x for _, x in positions}
    assert all(19 <= x <= 30 for x in xs) and all(22 <= y <= 28 for y, _ in positions)
    assert len(positions) > 10  # it does move
    data.set_epoch(7)
    assert torch.equal(data[0][0], data[0][0])  # an epoch's draw is fixed


def test_augmenter_bad_bounds():
    with pytest.raises(ValueError, match="rand_x_translation"):
        image_data_augmenter(rand_x_translation=(5, -5))


def test_generated_merch_data_is_deterministic(tmp_path, monkeypatch):
    def digest(folder: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*.png")):
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
        return h.hexdigest()

    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "one"))
    first = merch_data_dir(per_class=3)
    assert merch_data_dir(per_class=3) == first  # built once, then reused
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "two"))
    second = merch_data_dir(per_class=3)
    assert first != second and digest(first) == digest(second)
    store = image_datastore(second)
    assert store.class_names == MERCH_CLASSES and len(store) == 15
    assert Image.open(store.files[0]).size == (227, 227)


def test_digits_are_sklearns(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    store = image_datastore(digits_data_dir())
    assert len(store) == 1797 and store.class_names == tuple(str(d) for d in range(10))
    image = store.read(0)
    assert image.shape == (28, 28, 1) and image[:4].max() == 0 and image.max() > 200


def test_imtile_shape():
    tile = imtile([torch.rand(3, 20, 20) for _ in range(4)], size=16)
    assert tile.shape == (32, 32, 3) and tile.dtype == np.uint8
