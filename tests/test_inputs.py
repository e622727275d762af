"""The inputs users pass every day: NumPy arrays and PIL images, gray and RGBA files in a color image folder,
corrupt model files and non-finite pixels; each is handled or refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from dlqnb import DataError, DLQuantizer
from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.data.datastores import augmented_image_datastore, image_datastore
from dlqnb.deploy import ModelFileError, export_qdq_onnx, load_int8, predict_int8


@pytest.fixture(scope="module")
def uint8_images():
    return np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)


def _as_expected(uint8_images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uint8_images).permute(0, 3, 1, 2).float() / 255


def test_numpy_uint8_images_are_scaled_like_the_datastores(uint8_images):
    batches = list(iter_batches(uint8_images, mini_batch_size=2))
    assert count_batches(uint8_images, 2) == len(batches) == 3
    torch.testing.assert_close(torch.cat([images for images, _ in batches]), _as_expected(uint8_images), rtol=0, atol=0)


def test_numpy_float_batches_and_pil_lists(uint8_images):
    floats = _as_expected(uint8_images).numpy()
    (images, labels), = list(iter_batches(floats, mini_batch_size=8))
    assert labels is None and images.dtype == torch.float32
    np.testing.assert_array_equal(images.numpy(), floats)
    pil = [Image.fromarray(image) for image in uint8_images]
    pil[1] = pil[1].convert("RGBA")  # alpha is dropped
    (images, _), = list(iter_batches(pil, mini_batch_size=8))
    torch.testing.assert_close(images, _as_expected(uint8_images), rtol=0, atol=0)
    # (images, labels) batches of NumPy arrays, as a user's own loop yields them
    (images, labels), = list(iter_batches([(uint8_images, np.arange(5))]))
    assert images.shape == (5, 3, 20, 24) and labels.tolist() == [0, 1, 2, 3, 4]


def test_calibrate_accepts_numpy_and_pil_as_it_accepts_tensors(uint8_images):
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=3).eval()
    tables = []
    for data in (_as_expected(uint8_images), uint8_images, [Image.fromarray(image) for image in uint8_images]):
        quantizer = DLQuantizer(net)
        tables.append(quantizer.calibrate(data, progress=False))
    for table in tables[1:]:
        np.testing.assert_array_equal(table[["MinValue", "MaxValue"]].to_numpy(), tables[0][["MinValue", "MaxValue"]].to_numpy())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 3, 8, 8), dtype=np.int32), "NumPy array of int32"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), "1 or 3 channels"),
        ([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))], "PIL image 1 is 9×8"),
    ],
)
def test_unusable_arrays_and_images_are_refused_clearly(data, message):
    with pytest.raises(DataError, match=message):
        list(iter_batches(data))


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """A 'color' folder holding an RGB, a gray and an RGBA image."""
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((10, 10, 3), 100, np.uint8)).save(tmp_path / "a" / "0_rgb.png")
    Image.fromarray(np.full((10, 10), 50, np.uint8)).save(tmp_path / "a" / "1_gray.png")
    Image.fromarray(np.full((10, 10, 4), 200, np.uint8)).save(tmp_path / "a" / "2_rgba.png")
    return tmp_path


def test_gray_image_among_color_ones_is_refused_naming_the_file(mixed_folder):
    store = augmented_image_datastore((8, 8), image_datastore(mixed_folder))
    assert store[0][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match="1_gray.png.*1 channel.*color_preprocessing='gray2rgb'"):
        store[1]


def test_color_preprocessing_converts_as_matlab(mixed_folder):
    rgb = augmented_image_datastore((10, 10), image_datastore(mixed_folder), color_preprocessing="gray2rgb")
    images = [rgb[i][0] for i in range(3)]
    assert all(image.shape == (3, 10, 10) for image in images)
    assert torch.equal(images[1][0], images[1][2]) and float(images[1][0, 0, 0]) == pytest.approx(50 / 255)
    assert float(images[2][0, 0, 0]) == pytest.approx(200 / 255)  # RGBA: alpha dropped
    gray = augmented_image_datastore((10, 10), image_datastore(mixed_folder), color_preprocessing="rgb2gray")
    assert all(gray[i][0].shape == (1, 10, 10) for i in range(3))
    assert float(gray[0][0][0, 0, 0]) == pytest.approx(100 / 255)  # a gray RGB pixel keeps its value
    with pytest.raises(ValueError, match="color_preprocessing must be one of"):
        augmented_image_datastore((10, 10), image_datastore(mixed_folder), color_preprocessing="rgb")


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    torch.manual_seed(0)
    quantizer = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=3).eval(), execution_environment="cpu")
    quantizer.calibrate(torch.rand(2, 3, 32, 32), progress=False)
    return export_qdq_onnx(quantizer, tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", None])
def test_corrupt_or_foreign_model_files_name_the_file(int8_model, tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(int8_model.read_bytes()[:200] if content is None else content)
    with pytest.raises(ModelFileError, match="broken.onnx.*not a readable ONNX model"):
        load_int8(path, backend="onnxruntime")


def test_non_finite_pixels_are_refused_by_predict_int8(int8_model):
    images = torch.rand(1, 3, 32, 32)
    images[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf values"):
        predict_int8(int8_model, images)
    images[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        predict_int8(int8_model, images.numpy())
