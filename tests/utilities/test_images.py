"""Tests for `paca_hf.images`, the one home of image decoding and label reduction.

Expected values are computed by hand (16-bit 32896 = 128 * 257 -> 128/255, palette colours, luma weights) or taken
from PIL itself for the conversions the module delegates to PIL.
"""

import base64
import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paca_hf.images import image_to_array, load_image, load_label_map, open_image, reduce_labels


GREY16 = 32896  # 128 * 257


def with_orientation(image: Image.Image, orientation: int, path, fmt="JPEG") -> str:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    return str(path)


# ---------------------------------------------------------------------------------------------------------- PIL modes


def test_sixteen_bit_grey_is_128_over_255_everywhere(tmp_path):
    image = Image.fromarray(np.full((4, 6), GREY16, dtype=np.uint16))
    assert image.mode == "I;16"
    path = tmp_path / "grey16.png"
    image.save(path)
    assert Image.open(path).mode == "I;16"  # the file really holds 16-bit data
    for source in (image, str(path), path, np.asarray(image), torch.from_numpy(np.array(image))):
        array = image_to_array(source)
        assert array.shape == (4, 6, 3) and array.dtype == np.float32
        np.testing.assert_allclose(array, 128 / 255, rtol=0, atol=1e-7)
        assert abs(float(array[0, 0, 0]) - 0.502) < 5e-4
        pil = load_image(source)
        assert pil.mode == "RGB" and pil.size == (6, 4)
        assert np.all(np.asarray(pil) == 128)


@pytest.mark.parametrize("mode", ["I", "I;16", "I;16B"])
def test_sixteen_bit_modes_divide_by_65535(mode):
    values = np.array([[0, 257, 32896], [65535, 1000, 12345]], dtype=np.int32)
    if mode == "I":
        image = Image.fromarray(values)
    else:
        dtype = "<u2" if mode == "I;16" else ">u2"
        image = Image.frombytes(mode, (3, 2), values.astype(dtype).tobytes())
    assert image.mode == mode
    array = image_to_array(image)
    np.testing.assert_allclose(array[..., 0], values / 65535, atol=1e-7)
    assert np.all(array[..., 0] == array[..., 2])
    # load_image: round(value / 257)
    np.testing.assert_array_equal(np.asarray(load_image(image))[..., 1], [[0, 1, 128], [255, 4, 48]])


def test_mode_i_out_of_sixteen_bit_range_is_refused():
    with pytest.raises(ValueError, match=r"outside \[0, 65535\]"):
        image_to_array(Image.fromarray(np.array([[70000]], dtype=np.int32)))


def test_float_mode_is_unit_range():
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    array = image_to_array(Image.fromarray(values, mode="F"))
    assert array.dtype == np.float32 and array.shape == (2, 2, 3)
    np.testing.assert_array_equal(array[..., 2], values)
    np.testing.assert_array_equal(
        np.asarray(load_image(Image.fromarray(values, mode="F")))[..., 0], [[0, 64], [128, 255]]
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_array(Image.fromarray(values * 255, mode="F"))


def test_one_bit_and_grey():
    bits = Image.fromarray(np.array([[True, False]]))
    assert bits.mode == "1"
    np.testing.assert_array_equal(image_to_array(bits)[0], [[255] * 3, [0] * 3])
    grey = Image.fromarray(np.array([[7, 200]], dtype=np.uint8))
    array = image_to_array(grey)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array[0], [[7] * 3, [200] * 3])
    np.testing.assert_array_equal(image_to_array(grey, num_channels=None)[0], [[7], [200]])


def test_grey_alpha_drops_alpha_without_compositing():
    image = Image.fromarray(np.array([[[90, 0], [30, 255]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(image_to_array(image)[0], [[90] * 3, [30] * 3])
    np.testing.assert_array_equal(image_to_array(image, num_channels=4)[0], [[90, 90, 90, 0], [30, 30, 30, 255]])


def palette_image(transparent: bool):
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 255] + [0] * (256 * 3 - 9))
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_gives_palette_colours_alpha_dropped(transparent):
    image = palette_image(transparent)
    np.testing.assert_array_equal(image_to_array(image)[0], [[10, 20, 30], [200, 100, 50], [0, 0, 255]])
    rgba = image_to_array(image, num_channels=4)[0]
    np.testing.assert_array_equal(rgba[:, 3], [255, 0, 255] if transparent else [255, 255, 255])


def test_rgb_and_rgba():
    rgb = np.array([[[1, 2, 3], [250, 251, 252]]], dtype=np.uint8)
    assert image_to_array(Image.fromarray(rgb)).tolist() == rgb.tolist()
    rgba = np.concatenate([rgb, np.array([[[0], [128]]], dtype=np.uint8)], axis=-1)
    np.testing.assert_array_equal(image_to_array(Image.fromarray(rgba, mode="RGBA")), rgb)  # colour kept under alpha 0
    np.testing.assert_array_equal(image_to_array(Image.fromarray(rgba, mode="RGBA"), num_channels=None), rgba)
    image = Image.fromarray(rgb)
    assert load_image(image) is image  # nothing to convert: the same object


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV"])
def test_other_colour_spaces_are_converted_by_pil(mode):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    array = image_to_array(image)
    np.testing.assert_array_equal(array, np.asarray(image.convert("RGB")))
    assert array.shape == (5, 7, 3) and array.dtype == np.uint8


def test_cmyk_pure_cyan_is_hand_computed():
    image = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    np.testing.assert_array_equal(image_to_array(image)[0, 0], [0, 255, 255])


def test_luma_matches_pil_grey():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        image_to_array(rgb, num_channels=1)[..., 0], np.asarray(Image.fromarray(rgb).convert("L"))
    )
    # hand-computed: pure red 255 -> round(0.299 * 255) = 76
    assert image_to_array(np.full((2, 2, 3), (255, 0, 0), dtype=np.uint8), num_channels=1)[0, 0, 0] == 76


def test_bad_num_channels():
    with pytest.raises(ValueError, match="num_channels"):
        image_to_array(np.zeros((2, 2, 3), dtype=np.uint8), num_channels=2)


# ---------------------------------------------------------------------------------------------------------- arrays


def test_arrays_hwc_chw_grey_tensor_agree():
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for source in (rgb, rgb.transpose(2, 0, 1), torch.from_numpy(rgb.transpose(2, 0, 1).copy()), rgb.astype(np.int64)):
        np.testing.assert_array_equal(image_to_array(source), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(image_to_array(grey), np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(image_to_array(rgb[None, ..., 0]), np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(image_to_array(np.concatenate([rgb, rgb[..., :1]], axis=-1)), rgb)


def test_uint16_and_float_arrays():
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    np.testing.assert_allclose(image_to_array(values)[..., 0], [[0, 1], [128 / 255, 1 / 255]], atol=1e-7)
    floats = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float64)
    for source in (floats, floats.astype(np.float16), torch.tensor(floats, dtype=torch.bfloat16)):
        out = image_to_array(source)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out[..., 1], floats)
    np.testing.assert_array_equal(image_to_array(np.array([[True, False]]))[0, :, 0], [255, 0])


def test_input_data_format_resolves_ambiguity():
    array = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    np.testing.assert_array_equal(image_to_array(array), array.transpose(1, 2, 0))  # leading axis: channels
    np.testing.assert_array_equal(image_to_array(array, input_data_format="channels_last"), array)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 2, 5), dtype=np.uint8), "channels"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), "rank"),
        (np.array([[300]], dtype=np.int64), r"\[0, 255\]"),
        (np.array([[1.5]]), r"\[0, 1\]"),
        (np.array([[np.nan]]), "NaN"),
        (np.array([["a"]]), "dtype"),
        (object(), "unsupported image type"),
        ("no/such/file.png", "neither an existing file"),
    ],
)
def test_bad_inputs_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        image_to_array(bad)


# ---------------------------------------------------------------------------------------------------------- sources


def test_exif_orientation_six_is_applied_everywhere(tmp_path):
    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high
    stored[:, :40] = 255  # left half white
    path = with_orientation(Image.fromarray(stored), 6, tmp_path / "phone.jpg")
    assert Image.open(path).size == (80, 40)
    for source in (path, Image.open(path), f"file://{path}"):
        array = image_to_array(source)
        assert array.shape == (80, 40, 3)  # 40 wide, 80 high
        # Orientation 6 = rotate 90 degrees clockwise to display: the stored left half becomes the top half.
        assert array[:30].mean() > 240 and array[50:].mean() < 15
        assert load_image(source).size == (40, 80)


def test_file_url_base64_bytes_and_http(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    data = (tmp_path / "img.png").read_bytes()
    sources = [
        f"file://{tmp_path / 'img.png'}",
        base64.b64encode(data).decode(),
        data,
        "data:image/png;base64," + base64.b64encode(data).decode(),
    ]

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sources.append(f"http://127.0.0.1:{server.server_address[1]}/img.png")
        for source in sources:
            np.testing.assert_array_equal(image_to_array(source), rgb)
        with pytest.raises(ValueError, match="cannot download"):
            image_to_array(f"http://127.0.0.1:{server.server_address[1]}/missing.png", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_not_an_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="cannot decode"):
        open_image(str(path))


# ---------------------------------------------------------------------------------------------------------- labels


def test_label_maps_keep_values():
    palette = palette_image(transparent=True)  # indices 0, 1, 2 whatever the colours
    np.testing.assert_array_equal(load_label_map(palette), [[0, 1, 2]])
    sixteen = Image.fromarray(np.array([[0, 300, 65535]], dtype=np.uint16))
    labels = load_label_map(sixteen)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [[0, 300, 65535]])
    np.testing.assert_array_equal(load_label_map(torch.tensor([[[3, 4]]])), [[3, 4]])
    np.testing.assert_array_equal(load_label_map(np.array([[[5], [6]], [[7], [8]]], dtype=np.uint8)), [[5, 6], [7, 8]])
    np.testing.assert_array_equal(load_label_map(np.array([[1.0, 2.0]])), [[1, 2]])
    for bad, match in [
        (Image.new("RGB", (2, 2)), "single-channel"),
        (np.array([[0.5]]), "integer"),
        (np.zeros((2, 2, 3), dtype=np.uint8), "rank 2"),
        (np.array([[2**40]]), "int32"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_label_map(bad)


def test_label_map_from_file_with_exif_follows_its_image(tmp_path):
    labels = np.zeros((40, 80), dtype=np.uint8)
    labels[:, :40] = 7
    png = tmp_path / "labels.png"
    Image.fromarray(labels, mode="L").convert("P").save(png)
    own = with_orientation(Image.fromarray(labels).convert("P"), 6, tmp_path / "labels_exif.png", fmt="PNG")
    rotated = load_label_map(own)
    assert rotated.shape == (80, 40) and set(np.unique(rotated)) == {0, 7}
    assert np.all(rotated[:40] == 7) and np.all(rotated[40:] == 0)
    # A map without its own tag takes its image's orientation, so both stay aligned.
    image = Image.open(with_orientation(Image.new("RGB", (80, 40)), 6, tmp_path / "photo.jpg"))
    np.testing.assert_array_equal(load_label_map(str(png), image=image), rotated)
    np.testing.assert_array_equal(load_label_map(labels, image=image), rotated)
    assert load_label_map(str(png)).shape == (40, 80)
    # A map file with its own tag is turned once, by that tag, also next to its tagged image (path, bytes or
    # `datasets`' undecoded form).
    np.testing.assert_array_equal(load_label_map(own, image=image), rotated)
    data = Path(own).read_bytes()
    np.testing.assert_array_equal(load_label_map({"bytes": data, "path": None}, image=image), rotated)
    np.testing.assert_array_equal(
        load_label_map(str(png), image={"bytes": None, "path": str(tmp_path / "photo.jpg")}), rotated
    )


def test_reduce_labels_numpy_and_torch_hand_computed():
    labels = [[0, 1, 2], [150, 254, 255]]
    expected = [[255, 0, 1], [149, 253, 255]]
    out = reduce_labels(np.array(labels, dtype=np.uint8))
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)
    tensor = reduce_labels(torch.tensor(labels, dtype=torch.uint8))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.int64
    assert tensor.tolist() == expected
    assert reduce_labels(np.array([0, 5, -100]), ignore_index=-100).tolist() == [-100, 4, -100]
