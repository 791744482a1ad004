import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from mgnet.data import downscale, file_size, image_hash, load_image, load_photo, resize_rgb, to_model_input


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient_rgb(w=40, h=30):
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return np.concatenate([x, y, np.full_like(x, 128)], axis=2)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb_uint8(fmt):
    arr = load_image(encode(Image.fromarray(gradient_rgb()), fmt))
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8
    assert abs(int(arr[15, 39, 0]) - 255) < 40 and abs(int(arr[15, 0, 0])) < 40  # orientation kept


def test_exif_rotation_is_applied():
    img = Image.fromarray(gradient_rgb(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    arr = load_image(encode(img, "JPEG", exif=exif))
    assert arr.shape == (40, 30, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_pixels_pillow_shows(orientation):
    img = Image.fromarray(gradient_rgb(40, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(load_image(data), expected)


def smooth_photo(w=1200, h=900, seed=0):
    """A photo-like JPEG subject: random colour blobs, smooth at the pixel scale, as a camera's are."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 30, w // 30, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_large_jpeg_decodes_at_reduced_scale_with_the_same_picture_and_its_file_size(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(smooth_photo()), "JPEG", quality=95, exif=exif)
    full, full_size = load_photo(data)
    small, size = load_photo(data, min_side=300)
    assert size == full_size == (full.shape[1], full.shape[0])
    assert size == ((900, 1200) if orientation in (6, 8) else (1200, 900))
    assert file_size(data) == size  # from the header alone
    # 1/2 scale: the smallest reduction that keeps the shorter side at or above 300 would be 1/3, which
    # libjpeg has not; 1/2 is the largest of 1/2, 1/4, 1/8 that keeps it.
    assert small.shape[:2] == (full.shape[0] // 2, full.shape[1] // 2)
    # Same picture, same way up: the half-scale decode against the full decode averaged 2x2.
    halved = downscale(full, max(small.shape[:2]))
    assert np.abs(small.astype(int) - halved.astype(int)).mean() < 2.0
    # The model's input from either differs by at most a couple of levels.
    diff = np.abs(resize_rgb(small, 128).astype(int) - resize_rgb(full, 128).astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.5


def test_a_phone_jpeg_with_an_embedded_second_image_also_decodes_at_reduced_scale():
    # Ultra HDR and many cameras' JPEGs carry a second image; Pillow opens them as MPO.
    photo = Image.fromarray(smooth_photo())
    data = encode(photo, "MPO", save_all=True, append_images=[photo.resize((120, 90))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    arr, size = load_photo(data, min_side=300)
    assert arr.shape == (450, 600, 3) and size == (1200, 900)


def test_reduced_decoding_leaves_small_jpegs_and_other_formats_at_full_size():
    photo = Image.fromarray(smooth_photo())
    for fmt, min_side in (("JPEG", 451), ("PNG", 300), ("WEBP", 300)):  # 451: half of 900 would fall below
        arr, size = load_photo(encode(photo, fmt), min_side=min_side)
        assert arr.shape == (900, 1200, 3) and size == (1200, 900), fmt
    assert load_image(encode(photo, "JPEG"), min_side=100).shape == (113, 150, 3)  # 1/8 scale: 113 >= 100


def test_grayscale_16bit_cmyk_palette_alpha_animated():
    gray = load_image(encode(Image.fromarray(np.full((5, 6), 77, np.uint8)), "PNG"))
    assert gray.shape == (5, 6, 3) and (gray == 77).all()
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    arr16 = load_image(encode(sixteen, "PNG"))
    assert arr16.shape == (4, 4, 3) and (arr16 == 255).all()
    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (8, 8, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    pal = Image.new("P", (6, 6))
    pal.putpalette([255, 0, 0] * 256)
    assert (load_image(encode(pal, "PNG"))[..., 0] == 255).all()
    rgba = Image.new("RGBA", (6, 6), (0, 0, 0, 0))  # fully transparent -> white background
    assert (load_image(encode(rgba, "PNG")) == 255).all()
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    first = load_image(buf.getvalue())
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50


def test_one_by_one_and_path_and_file_object(tmp_path):
    data = encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    assert load_image(tmp_path / "a.png").tolist() == [[[1, 2, 3]]]
    assert load_image(io.BytesIO(data)).shape == (1, 1, 3)
    assert to_model_input(load_image(data), 32).shape == (1, 3, 32, 32)


def png_header_only(width, height):
    """A PNG that declares a huge size but carries almost no data (a decompression bomb)."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not an image format"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not an image format"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG or HTML"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "SVG or HTML"),
        (png_header_only(50_000, 50_000), "more than this app accepts|decompression bomb"),
        (png_header_only(200_000, 10), "more than this app accepts"),
    ],
)
def test_hostile_inputs_raise_readable_value_errors(data, match):
    with pytest.raises(ValueError, match=match):
        load_image(data)


def test_truncated_and_mislabelled_files(tmp_path):
    jpeg = encode(Image.fromarray(gradient_rgb(64, 64)), "JPEG")
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_image(jpeg[: len(jpeg) // 3])
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(encode(Image.fromarray(gradient_rgb()), "PNG"))
    assert load_image(png_named_jpg).shape == (30, 40, 3)  # content decides, not the name


def test_large_but_honest_image_is_accepted():
    big = Image.new("L", (10000, 10000), 200)
    arr = load_image(encode(big, "PNG", compress_level=1))
    assert arr.shape == (10000, 10000, 3)


def test_image_hash_depends_on_pixels_and_shape():
    a = np.zeros((4, 6, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_hash(a) != image_hash(b) and image_hash(a) != image_hash(a.reshape(6, 4, 3))
    assert image_hash(a) == image_hash(a.copy())
    # the definition (shape, then the pixel bytes), also for read-only and non-contiguous views
    frozen = a.copy()
    frozen.flags.writeable = False
    want = hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()[:16]
    assert image_hash(frozen) == want == image_hash(np.asfortranarray(a))
    strided = np.zeros((4, 12, 3), np.uint8)[:, ::2]
    assert image_hash(strided) == hashlib.sha256(str((4, 6, 3)).encode() + strided.tobytes()).hexdigest()[:16]
