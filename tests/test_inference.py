import io
import time

import numpy as np
import pytest
from PIL import Image

from animalcls.core.errors import ImageError
from animalcls.serving import inference


def _asymmetric_rgb(width=40, height=20):
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)  # left half red
    return Image.fromarray(array)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "I;16", "1", "L", "I", "F"])
def test_every_pil_mode_becomes_rgb(mode):
    image = (
        _asymmetric_rgb().convert("L").convert(mode) if mode in ("I;16", "I", "F") else _asymmetric_rgb().convert(mode)
    )
    out = inference.load_image(image)
    assert out.mode == "RGB" and out.size == (40, 20)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    array = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    out = np.asarray(inference.load_image(tmp_path / "deep.png"))
    assert out.max() == 255 and out.min() == 0 and 100 < out.mean() < 155


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(inference.load_image(image))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    image = _asymmetric_rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    out = inference.load_image(tmp_path / "rotated.jpg")
    assert out.size == (20, 40)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 200  # the red left half is now on top


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out = np.asarray(inference.load_image(tmp_path / "anim.gif"))
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_tiny_images_and_arrays_are_accepted():
    assert inference.load_image(Image.new("RGB", (1, 1))).size == (1, 1)
    assert inference.load_image(np.zeros((3, 3), np.uint8)).mode == "RGB"
    floats = inference.load_image(np.ones((2, 2, 3), np.float32))
    assert np.asarray(floats).max() == 255


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"this is a text file", "not an image"),
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image|corrupt"),
    ],
)
def test_non_images_are_rejected(tmp_path, payload, message):
    path = tmp_path / "x.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=message):
        inference.load_image(path)


def test_truncated_jpeg_is_rejected(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:600])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        inference.load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_refused_fast(tmp_path):
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")  # 100 MP, a few KB on disk
    start = time.monotonic()
    with pytest.raises(ImageError, match="pixel"):
        inference.load_image(tmp_path / "bomb.png")
    assert time.monotonic() - start < 2
    with pytest.raises(ImageError, match="pixel"):
        inference.load_image(np.zeros((8000, 8000, 1), np.uint8))


def test_missing_file_and_bad_array_shape():
    with pytest.raises(ImageError, match="not found"):
        inference.load_image("/nonexistent/cat.jpg")
    with pytest.raises(ImageError, match="shape"):
        inference.load_image(np.zeros((4, 4, 5)))


def test_predict_accepts_paths_pil_and_arrays_and_caches_the_model(tiny_checkpoints, tmp_path):
    folder = tiny_checkpoints["transfer"]
    _asymmetric_rgb().save(tmp_path / "a.png")
    results = inference.predict([tmp_path / "a.png", _asymmetric_rgb(), np.asarray(_asymmetric_rgb())], folder)
    assert len(results) == 3
    assert list(results[0]) == ["cat", "spider", "butterfly", "elephant", "chicken"]
    assert all(abs(sum(r.values()) - 1) < 1e-4 for r in results)
    np.testing.assert_allclose(list(results[0].values()), list(results[1].values()), rtol=1e-5)
    assert inference.load_predictor(folder) is inference.load_predictor(folder)
    single = inference.predict(tmp_path / "a.png", folder)
    assert len(single) == 1


def test_predictions_match_the_training_pipeline(tiny_checkpoints, tmp_path):
    """The PIL path used at inference and the tf.data path used in evaluation agree."""
    from animalcls.data.dataset import make_dataset

    predictor = inference.load_predictor(tiny_checkpoints["scratch"])
    _asymmetric_rgb(64, 64).save(tmp_path / "a.png")
    ds = make_dataset([str(tmp_path / "a.png")], [0], 5, predictor.image_size, 1)
    x, _ = next(iter(ds))
    via_tf = predictor.forward(x.numpy())[0]
    via_pil = np.array(list(predictor.predict([tmp_path / "a.png"])[0].values()))
    np.testing.assert_allclose(via_pil, via_tf, atol=1e-4)


def test_bad_image_does_not_break_the_predictor(tiny_checkpoints, tmp_path):
    predictor = inference.load_predictor(tiny_checkpoints["scratch"])
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ImageError):
        predictor.predict([tmp_path / "bad.jpg"])
    assert len(predictor.predict([_asymmetric_rgb()])[0]) == 5


def test_a_changed_model_file_is_reloaded(tiny_checkpoints, tmp_path):
    """load_predictor caches per (folder, model file time): replacing model.keras gives a new
    predictor with the new weights; an unchanged file gives the cached one."""
    import os
    import shutil

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints["scratch"], folder)
    image = _asymmetric_rgb()
    first = inference.load_predictor(folder)
    assert inference.load_predictor(folder) is first
    before = first.predict([image])[0]
    shutil.copy(tiny_checkpoints["transfer"] / "model.keras", folder / "model.keras")  # same input and outputs
    later = (folder / "model.keras").stat().st_mtime + 10
    os.utime(folder / "model.keras", (later, later))
    second = inference.load_predictor(folder)
    assert second is not first
    expected = inference.load_predictor(tiny_checkpoints["transfer"]).predict([image])[0]
    assert second.predict([image])[0] == pytest.approx(expected, abs=1e-6)
    assert second.predict([image])[0] != pytest.approx(before, abs=1e-6)
