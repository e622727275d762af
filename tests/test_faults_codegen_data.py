"""Faults and inputs of issue 20 in code generation and data: codegen never deletes what it did not write,
16-bit and oversized images are read as they are (or refused naming the file), and one (images, labels)
pair is data like any other."""

from __future__ import annotations

import json
import os
from pathlib import Path
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import pytest
import warnings
import torch
import torchvision
from PIL import Image

from dlqnb import DataError, DLQuantizer
from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.deploy.codegen import DeploymentConfig, codegen
from dlqnb.data.datastores import augmented_image_datastore, image_datastore

MANIFEST = "codegen_manifest.json"  # the list of the files codegen wrote in a folder
GENERATED = {"model_int8.onnx", "predict_int8.py", "requirements.txt", "README.md", MANIFEST}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A SqueezeNet calibrated for the CPU target at 32×32 and its calibration file."""
    folder = tmp_path_factory.mktemp("calibrated")
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=4).eval()
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), progress=False)
    quantizer.save(folder / "quantObj.safetensors")
    config = DeploymentConfig(target_library="onnxruntime", calibration_result_file=folder / "quantObj.safetensors")
    return net, config


# ------------------------------------------------------------------ codegen never deletes what it did not write
@pytest.mark.parametrize("user_files", [["my_notes.txt"], ["train.py", "quantObj.safetensors"]])
def test_codegen_refuses_a_folder_of_user_files_and_keeps_them(calibrated, tmp_path, user_files):
    net, config = calibrated
    project = tmp_path / "project"
    project.mkdir()
    for name in user_files:
        (project / name).write_text(f"the user's {name}")
    with pytest.raises(FileExistsError, match=r"project.*holds files codegen did not write.*" + user_files[0]):
        codegen(config, net, output_dir=project, verbose=False)
    assert sorted(p.name for p in project.iterdir()) == sorted(user_files)
    assert all((project / name).read_text() == f"the user's {name}" for name in user_files)


def test_codegen_writes_into_the_current_folder_and_relative_paths(calibrated, tmp_path, monkeypatch):
    net, config = calibrated
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert codegen(config, net, output_dir=".", verbose=False) == Path(".")
    assert {p.name for p in here.iterdir()} == GENERATED
    codegen(config, net, output_dir=".", verbose=False)  # again: its own files are replaced
    out = codegen(config, net, output_dir=Path("deploy") / "int8", verbose=False)
    assert not out.is_absolute() and {p.name for p in (here / "deploy" / "int8").iterdir()} == GENERATED


def test_codegen_refuses_the_current_folder_when_it_holds_user_files(calibrated, tmp_path, monkeypatch):
    net, config = calibrated
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("print('training')")
    with pytest.raises(FileExistsError, match="train.py"):
        codegen(config, net, output_dir=".", verbose=False)
    assert [p.name for p in tmp_path.iterdir()] == ["train.py"]


def test_regenerating_replaces_only_what_codegen_wrote(calibrated, tmp_path):
    net, config = calibrated
    out = codegen(config, net, output_dir=tmp_path / "out", verbose=False)
    (out / "notes.txt").write_text("mine")
    codegen(config, net, entry_point="classify", output_dir=out, verbose=False)
    assert {p.name for p in out.iterdir()} == GENERATED - {"predict_int8.py"} | {"classify.py", "notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == GENERATED - {"predict_int8.py", MANIFEST} | {"classify.py"}


def test_a_file_codegen_did_not_write_or_that_was_edited_is_never_replaced(calibrated, tmp_path):
    net, config = calibrated
    out = codegen(config, net, output_dir=tmp_path / "out", verbose=False)
    (out / "classify.py").write_text("# the user's own classifier")
    with pytest.raises(FileExistsError, match=r"classify.py \(not written by codegen\)"):
        codegen(config, net, entry_point="classify", output_dir=out, verbose=False)
    assert (out / "classify.py").read_text() == "# the user's own classifier"
    (out / "classify.py").unlink()
    edited = (out / "predict_int8.py").read_text() + "\n# tuned by hand\n"
    (out / "predict_int8.py").write_text(edited)
    with pytest.raises(FileExistsError, match=r"predict_int8.py \(changed since codegen wrote it\)"):
        codegen(config, net, output_dir=out, verbose=False)
    assert (out / "predict_int8.py").read_text() == edited


def test_a_manifest_naming_files_outside_the_folder_is_not_trusted(calibrated, tmp_path):
    net, config = calibrated
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"generator": "dlqnb codegen", "files": {"../victim.txt": None}, "caches": []}))
    with pytest.raises(FileExistsError, match=f"its {MANIFEST} is not one codegen wrote"):
        codegen(config, net, output_dir=out, verbose=False)
    assert victim.read_text() == "keep me" and [p.name for p in out.iterdir()] == [MANIFEST]


def test_a_folder_codegen_wrote_before_it_kept_a_manifest_is_still_its_own(calibrated, tmp_path):
    net, config = calibrated
    out = codegen(config, net, output_dir=tmp_path / "out", verbose=False)
    (out / MANIFEST).unlink()  # as the folders of earlier versions were
    (out / "notes.txt").write_text("mine")
    # a user's edited copy of an old entry point still says it was generated: it is not this run's, so it stays
    (out / "my_predict.py").write_text((out / "predict_int8.py").read_text().replace("def predict_int8", "def my_predict"))
    codegen(config, net, output_dir=out, verbose=False)
    assert {p.name for p in out.iterdir()} == GENERATED | {"notes.txt", "my_predict.py"}


def test_tensorrt_engines_built_from_the_old_model_are_removed(calibrated, tmp_path):
    net, config = calibrated
    trt = DeploymentConfig(target_library="tensorrt", calibration_result_file=config.calibration_result_file)
    out = codegen(trt, net, output_dir=tmp_path / "trt", verbose=False)
    (out / "engines").mkdir()  # what the generated code builds on its first call
    (out / "engines" / "model.engine").write_bytes(b"engine of the old model")
    (out / "notes.txt").write_text("mine")
    codegen(trt, net, output_dir=out, verbose=False)
    assert not (out / "engines").exists() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_generated_files_have_the_usual_permissions(calibrated, tmp_path, umask):
    net, config = calibrated
    previous = os.umask(umask)
    try:
        out = codegen(config, net, output_dir=tmp_path / "new" / "codegen", verbose=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}


@pytest.mark.parametrize("name", ["json", "os", "numpy", "PIL", "onnxruntime", "openvino", "tensorrt", "__main__", 3, "np", "Image", "_prepare", "MODEL_FILE"])
def test_entry_points_that_would_shadow_an_import_are_refused(calibrated, tmp_path, name):
    net, config = calibrated
    with pytest.raises(ValueError, match="entry_point"):
        codegen(config, net, entry_point=name, output_dir=tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 16-bit and oversized images
def _png16(path: Path, pixels: np.ndarray) -> Path:
    """Write H×W (gray) or H×W×3 (RGB) uint16 pixels as a 16-bit PNG (Pillow writes only gray ones itself)."""
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_a_mid_gray_16_bit_image_reads_as_half(tmp_path):
    (tmp_path / "gray").mkdir()
    _png16(tmp_path / "gray" / "mid.png", np.full((6, 5), 32768, dtype=np.uint16))
    image, _ = augmented_image_datastore((6, 5), image_datastore(tmp_path))[0]
    assert image.shape == (1, 6, 5) and float(image.mean()) == pytest.approx(32768 / 65535, abs=1e-6)


def test_the_same_picture_in_8_and_16_bits_gives_the_same_pixels(tmp_path):
    rng = np.random.default_rng(3)
    gray16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    (tmp_path / "a").mkdir()
    _png16(tmp_path / "a" / "gray16.png", gray16)
    Image.fromarray(np.round(gray16 / 257).astype(np.uint8)).save(tmp_path / "a" / "gray8.png")
    Image.fromarray(gray16).save(tmp_path / "a" / "gray16.tif")
    Image.fromarray(gray16).save(tmp_path / "a" / "gray16.pgm")  # read back by Pillow as 32-bit 'I'
    _png16(tmp_path / "a" / "rgb16.png", rgb16)
    Image.fromarray(np.round(rgb16 / 257).astype(np.uint8)).save(tmp_path / "a" / "rgb8.png")
    store = image_datastore(tmp_path)
    names = [path.name for path in store.files]
    pixels = {name: augmented_image_datastore((12, 10), store.subset([names.index(name)]))[0][0] for name in names}
    for sixteen in ("gray16.png", "gray16.tif", "gray16.pgm"):
        assert pixels[sixteen].shape == (1, 12, 10)
        torch.testing.assert_close(pixels[sixteen], pixels["gray8.png"], rtol=0, atol=1 / 255)
    # Pillow reads 16-bit color PNGs as 8 bits itself (their high byte: one level from rounding at most)
    torch.testing.assert_close(pixels["rgb16.png"], pixels["rgb8.png"], rtol=0, atol=1 / 255 + 1e-6)
    # the same scaling for PIL images and uint16 arrays given directly
    (from_pil, _), = iter_batches([Image.open(tmp_path / "a" / "gray16.png")])
    (from_array, _), = iter_batches(gray16[None, :, :, None])
    torch.testing.assert_close(from_pil[0], pixels["gray16.png"], rtol=0, atol=0)
    torch.testing.assert_close(from_array[0], pixels["gray16.png"], rtol=0, atol=0)


def test_float_and_32_bit_images_are_read_in_range_or_refused_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4), 0.25, dtype=np.float32)).save(tmp_path / "a" / "0_quarter.tif")
    Image.fromarray(np.full((4, 4), 300.0, dtype=np.float32)).save(tmp_path / "a" / "1_bright.tif")
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "a" / "2_deep.tif")
    store = image_datastore(tmp_path)
    image, _ = augmented_image_datastore((4, 4), store)[0]
    assert image.shape == (1, 4, 4) and float(image.mean()) == pytest.approx(0.25)
    with pytest.raises(DataError, match=r"1_bright.tif.*\[0, 1\].*\[300, 300\]"):
        store.read(1)
    with pytest.raises(DataError, match=r"2_deep.tif.*8- or 16-bit values"):
        store.read(2)


def test_an_image_over_the_decompression_bomb_limit_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "a" / "huge.png")
    store = image_datastore(tmp_path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels: over twice the limit
    with pytest.raises(DataError, match=r"huge.png.*decompression-bomb limit.*MAX_IMAGE_PIXELS"):
        store.read(0)


def test_generated_code_scores_a_16_bit_image_as_its_8_bit_twin(calibrated, tmp_path):
    net, config = calibrated
    out = codegen(config, net, output_dir=tmp_path / "out", verbose=False)
    rng = np.random.default_rng(4)
    files = []
    for shape in [(32, 32), (40, 50)]:  # of the input size, and resized
        gray8 = rng.integers(0, 256, shape, dtype=np.uint8)
        rgb8 = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(gray8).save(tmp_path / f"gray8_{shape[0]}.png")
        _png16(tmp_path / f"gray16_{shape[0]}.png", gray8.astype(np.uint16) * 257)  # the same picture in 16 bits
        Image.fromarray(rgb8).save(tmp_path / f"rgb8_{shape[0]}.png")
        _png16(tmp_path / f"rgb16_{shape[0]}.png", rgb8.astype(np.uint16) * 257)
        files += [tmp_path / f"{kind}_{shape[0]}.png" for kind in ("gray8", "gray16", "rgb8", "rgb16")]
    result = subprocess.run([sys.executable, "-I", str(out / "predict_int8.py"), *map(str, files)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = [np.float32(json.loads(line)) for line in result.stdout.splitlines()]
    assert len(scores) == len(files)
    for eight, sixteen in zip(scores[0::2], scores[1::2]):
        np.testing.assert_array_equal(sixteen, eight)  # k/255 and 257k/65535 are the same float32


def test_the_generated_command_names_an_image_it_cannot_read(calibrated, tmp_path):
    net, config = calibrated
    out = codegen(config, net, output_dir=tmp_path / "out", verbose=False)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = subprocess.run([sys.executable, "-I", str(out / "predict_int8.py"), str(tmp_path / "broken.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "broken.png: cannot read the image" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ one (images, labels) pair
def test_one_images_labels_pair_is_data_with_its_labels():
    images = torch.rand(70, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(70) % 4
    batches = list(iter_batches((images, labels)))
    assert count_batches((images, labels)) == len(batches) == 3
    torch.testing.assert_close(torch.cat([batch for batch, _ in batches]), images, rtol=0, atol=0)
    assert torch.equal(torch.cat([batch_labels for _, batch_labels in batches]), labels)
    uint8 = np.random.default_rng(6).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    (batch, batch_labels), = iter_batches((uint8, [0, 1, 2, 3, 0]))
    assert batch.shape == (5, 3, 8, 8) and batch_labels.tolist() == [0, 1, 2, 3, 0]
    # a list of (images, labels) batches and a tuple of image batches are still batches
    images, labels = images[:4], labels[:4]
    assert [len(batch) for batch, _ in iter_batches([(images, labels), (images[:3], labels[:3])])] == [4, 3]
    assert [len(batch) for batch, _ in iter_batches((images, images[:2]))] == [4, 2]
    with pytest.raises(DataError, match="batch 1"):  # labels of another length: not a pair
        list(iter_batches((images, labels[:3])))


def test_validate_takes_one_images_labels_pair():
    torch.manual_seed(0)
    quantizer = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=3).eval(), execution_environment="cpu")
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    quantizer.calibrate(images, progress=False)
    result = quantizer.validate((images, torch.tensor([0, 1, 2, 0, 1])), progress=False)
    assert result.num_samples == 5


# ------------------------------------------------------------------ generated data in the cache
def test_generated_data_are_verified_and_regenerated_when_damaged(tmp_path, monkeypatch):
    from dlqnb.core.cache import CacheWarning
    from dlqnb.data.datastores import digits_data_dir

    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    folder = digits_data_dir()
    image = sorted((folder / "3").iterdir())[0]
    original = image.read_bytes()
    image.write_bytes(original[: len(original) // 2])  # a truncated PNG
    with pytest.warns(CacheWarning, match=f"{folder}.*does not match its manifest"):
        again = digits_data_dir()
    assert again == folder and image.read_bytes() == original
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact folder: no warning
        assert digits_data_dir() == folder


def test_generated_data_in_a_read_only_cache_go_to_a_temporary_folder(read_only_folder, monkeypatch):
    from dlqnb.core.cache import CacheWarning
    from dlqnb.data.datastores import digits_data_dir

    monkeypatch.setenv("DLQNB_CACHE", str(read_only_folder))
    with pytest.warns(CacheWarning, match="temporary folder"):
        folder = digits_data_dir()
    assert read_only_folder not in folder.parents and len(list((folder / "7").iterdir())) > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # generated once per process: no second copy, no second warning
        assert digits_data_dir() == folder
