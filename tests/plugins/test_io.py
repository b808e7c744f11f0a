"""Image and mask reading: formats, bit depths, mask specs, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io


@pytest.fixture()
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_lossless_rgb_formats(tmp_path, rgb, ext):
    path = tmp_path / f"a{ext}"
    Image.fromarray(rgb).save(path)
    out = io.read_image(path)
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    assert io.image_size(path) == (12, 16)


def test_jpeg_is_close(tmp_path):
    smooth = np.zeros((16, 16, 3), np.uint8) + np.array([200, 100, 150], np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    out = io.read_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - smooth).max() <= 3


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8) + np.array([200, 40, 90], np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = io.read_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3) and np.abs(out.astype(int) - rgb).max() <= 6


def test_grey_8_and_16_bit(tmp_path):
    g8 = np.arange(0, 240, 2, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    out = io.read_image(tmp_path / "g8.png")
    assert out.shape == (10, 12, 3) and np.array_equal(out[..., 1], g8)
    g16 = np.array([[0, 257, 65535], [32896, 1000, 60000]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(g16).save(tmp_path / name)
        out = io.read_image(tmp_path / name)
        assert out[..., 0].tolist() == [[0, 1, 255], [128, 4, 233]], name


def test_rgb_16_bit_tiff(tmp_path):
    import tifffile

    a = np.zeros((4, 5, 3), np.uint16)
    a[0, 0] = [65535, 32896, 0]
    tifffile.imwrite(tmp_path / "c16.tif", a)
    out = io.read_image(tmp_path / "c16.tif")
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [255, 128, 0]


def test_mask_binary_values_threshold_canonical(tmp_path):
    m = np.array([[0, 128, 255], [255, 0, 128]], np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    assert io.read_mask(tmp_path / "m.png").tolist() == [[0, 1, 1], [1, 0, 1]]
    spec = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}
    assert io.read_mask(tmp_path / "m.png", spec).tolist() == [[0, 1, 2], [2, 0, 1]]
    assert io.read_mask(tmp_path / "m.png", {"mode": "threshold", "cell": 64, "nucleus": 200}).tolist() == \
        [[0, 1, 2], [2, 0, 1]]
    Image.fromarray(np.array([[0, 1, 2]], np.uint8)).save(tmp_path / "c.png")
    assert io.read_mask(tmp_path / "c.png", {"mode": "canonical"}).tolist() == [[0, 1, 2]]
    with pytest.raises(DataError, match=r"m.png: mask has value 255; expected 0, 1 or 2"):
        io.read_mask(tmp_path / "m.png", {"mode": "canonical"})


def test_mask_rgb_equal_channels_and_unequal(tmp_path):
    m = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(np.stack([m] * 3, -1)).save(tmp_path / "rgb.png")
    spec = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}
    assert io.read_mask(tmp_path / "rgb.png", spec).tolist() == [[0, 1, 2]]
    bad = np.stack([m, m, m[:, ::-1]], -1)
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match="mask is RGB with unequal channels"):
        io.read_mask(tmp_path / "bad.png")


def test_mask_unexpected_values(tmp_path):
    Image.fromarray(np.array([[0, 128, 77]], np.uint8)).save(tmp_path / "m.png")
    spec = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}
    with pytest.raises(DataError, match=r"m.png: mask has unexpected values \[77\]"):
        io.read_mask(tmp_path / "m.png", spec)
    assert io.read_mask(tmp_path / "m.png", dict(spec, strict=False)).tolist() == [[0, 1, 1]]


COLOURS = {"mode": "colors", "background": [[255, 255, 255]], "cytoplasm": [[0, 0, 255]],
           "nucleus": [[0, 255, 255]]}


def _colour_mask(h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A white / blue cytoplasm / cyan nucleus mask (the wbc-crops convention) and its 0/1/2 truth."""
    truth = np.zeros((h, w), np.uint8)
    truth[4:20, 6:26] = 1
    truth[9:15, 12:20] = 2
    palette = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255]], np.uint8)
    return palette[truth], truth


def test_mask_colors_exact_noisy_and_jpeg(tmp_path):
    rgb, truth = _colour_mask()
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert np.array_equal(io.read_mask(tmp_path / "m.png", COLOURS), truth)
    # JPEG-like noise of up to 20 per channel (|d| <= 34.7) stays within tolerance 40
    noise = np.random.default_rng(0).integers(-20, 21, rgb.shape)
    Image.fromarray(np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8)).save(tmp_path / "n.png")
    assert np.array_equal(io.read_mask(tmp_path / "n.png", dict(COLOURS, tolerance=40)), truth)
    with pytest.raises(DataError, match=r"n.png: mask has \d+ pixel\(s\) of \d+ colour\(s\) farther than "
                                         r"tolerance 5 from every listed colour"):
        io.read_mask(tmp_path / "n.png", dict(COLOURS, tolerance=5))
    # a real JPEG: chroma subsampling moves border colours by ~100; the default tolerance
    # (half the smallest distance between two classes' colours: 255 / 2) still maps every pixel
    assert io.colour_tolerance(COLOURS) == 127.5
    Image.fromarray(rgb).save(tmp_path / "m.jpg", quality=75)
    stored = np.asarray(Image.open(tmp_path / "m.jpg")).astype(int)
    assert np.abs(stored - rgb.astype(int)).max() > 40  # the JPEG did move colours
    assert np.array_equal(io.read_mask(tmp_path / "m.jpg", COLOURS), truth)


def test_mask_colors_off_palette_and_defaults(tmp_path):
    rgb, truth = _colour_mask()
    rgb[0, 0:3] = (255, 0, 0)  # three red pixels: an annotation colour the recipe does not list
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError) as exc:
        io.read_mask(tmp_path / "m.png", COLOURS)
    assert str(exc.value) == (
        f"{tmp_path / 'm.png'}: mask has 3 pixel(s) of 1 colour(s) farther than tolerance 127.5 from every listed "
        "colour, e.g. [255, 0, 0] (3 px); the recipe maps background [[255, 255, 255]]; cytoplasm [[0, 0, 255]]; "
        "nucleus [[0, 255, 255]] (list the colour under a class, raise tolerance, or set strict: false to take "
        "the nearest colour)")
    # strict: false takes the nearest colour (red is 360 from white and from blue: the first listed wins)
    loose = io.read_mask(tmp_path / "m.png", dict(COLOURS, strict=False))
    assert loose[0, :3].tolist() == [0, 0, 0] and np.array_equal(loose[1:], truth[1:])
    # listing red as nucleus maps it; background defaults to black
    assert io.read_mask(tmp_path / "m.png", dict(COLOURS, nucleus=[[0, 255, 255], [255, 0, 0]]))[0, :3].tolist() \
        == [2, 2, 2]
    black = np.zeros((2, 2, 3), np.uint8)
    black[0, 0] = (0, 0, 255)
    Image.fromarray(black).save(tmp_path / "k.png")
    assert io.read_mask(tmp_path / "k.png", {"mode": "colors", "cytoplasm": [[0, 0, 255]]}).tolist() == [[1, 0], [0, 0]]
    # a grey mask read with a colour spec is a colour mask with three equal channels
    Image.fromarray(np.array([[255, 0]], np.uint8)).save(tmp_path / "g.png")
    assert io.read_mask(tmp_path / "g.png", {"mode": "colors", "background": [[0, 0, 0]],
                                             "nucleus": [[255, 255, 255]]}).tolist() == [[2, 0]]


def test_check_mask_spec():
    assert io.check_mask_spec(COLOURS) == []
    assert io.check_mask_spec({"mode": "colors", "background": [[255, 255, 255]]}) == [
        ("", "a colors mask spec needs the colour(s) of cytoplasm or nucleus; e.g. cytoplasm: [[0, 0, 255]], "
             "nucleus: [[0, 255, 255]]")]
    assert io.check_mask_spec(dict(COLOURS, nucleus=[[0, 255, 255], [0, 0, 255]])) == [
        ("/nucleus/1", "colour [0, 0, 255] is listed for both cytoplasm and nucleus")]
    assert io.check_mask_spec({"mode": "values", "cytoplasm": [128], "tolerance": 3}) == [
        ("/tolerance", "tolerance is only used with mode: colors")]


def test_binary_1bit_and_16bit_masks(tmp_path):
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "b1.png")
    assert io.read_mask(tmp_path / "b1.png").tolist() == [[0, 1]]
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "b16.png")
    assert io.read_mask(tmp_path / "b16.png").tolist() == [[0, 1]]


def test_truncated_and_garbage_files(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    # the header is intact: cheap checks pass, decoding fails with a clear message
    assert io.image_size(tmp_path / "trunc.png") == (12, 16)
    with pytest.raises(DataError, match=r"trunc.png: cannot read image"):
        io.read_image(tmp_path / "trunc.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"junk.png: not a readable image"):
        io.image_size(tmp_path / "junk.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.png: file is empty"):
        io.image_size(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"nope.png: file not found"):
        io.read_image(tmp_path / "nope.png")


def test_list_images(tmp_path, rgb):
    for rel in ["b/x.png", "a/deep/er/y.jpg", "a/y_mask.png", ".hidden/z.png", "a/notes.txt", "a/.z.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in io.list_images(tmp_path, exclude_suffix="_mask.png")]
    assert found == ["a/deep/er/y.jpg", "b/x.png"]
    with pytest.raises(DataError, match="folder not found"):
        list(io.list_images(tmp_path / "missing"))


def test_file_stamp_changes_with_content(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"1")
    s1 = io.file_stamp(f)
    f.write_bytes(b"22")
    assert io.file_stamp(f) != s1
    assert io.file_stamp(tmp_path / "gone.png").endswith("|missing")


def test_png_roundtrip_and_bytes(tmp_path, rgb):
    io.write_png(tmp_path / "w.png", rgb)
    assert np.array_equal(io.read_image(tmp_path / "w.png"), rgb)  # RGB order preserved
    assert io.png_bytes(rgb).startswith(b"\x89PNG")
