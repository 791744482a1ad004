"""Image loading (hostile-input safe), model-input conversion and cached ImageFolder datasets."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoints import atomic_save

# Bounds for anything we decode. A 10000 x 10000 photo (100 MP) is accepted; beyond this we refuse.
MAX_PIXELS = 120_000_000
MAX_SIDE = 20_000
MAX_BYTES = 200 * 1024 * 1024
# PIL's own bomb check (warning above the limit, error above twice it) uses the same bound as ours.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Photos for the app and figures are decoded with their shorter side at least this: the smallest glimpse
# (0.2 of the side) still fills a 256 px display crop. A JPEG larger than twice this decodes at 1/2, 1/4 or
# 1/8 scale inside libjpeg, several times faster than a full decode (a 12 MP photo: 17 ms against 92 ms).
PHOTO_MIN_SIDE = 1280


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        data = source.read(MAX_BYTES + 1)
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path} is not a file.")
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{path.name} is larger than {MAX_BYTES // 2**20} MB; use a smaller image.")
        data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise ValueError(f"The file is larger than {MAX_BYTES // 2**20} MB; use a smaller image.")
    return data


def load_image(source, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """Decode an image file (path, bytes or file object) to an RGB uint8 array [H, W, 3].

    Applies EXIF orientation; converts grayscale, 16-bit, CMYK, palette and alpha images to RGB
    (alpha is composited on white); takes the first frame of animations. Raises ValueError with a
    readable message for anything that is not an image we can decode honestly.

    ``min_side``: a JPEG whose shorter side is at least twice this is decoded at a reduced scale (1/2, 1/4
    or 1/8, by libjpeg's scaled inverse DCT), the strongest of these that keeps its shorter side at least
    ``min_side``. Other formats, and smaller JPEGs, decode at full size.
    """
    return load_photo(source, max_pixels, min_side)[0]


def load_photo(source, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> tuple[np.ndarray, tuple]:
    """``load_image`` plus the file's own size (width, height), after EXIF orientation."""
    data = _read_bytes(source)
    if not data:
        raise ValueError("The file is empty.")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")):
        raise ValueError("This is a vector/HTML document (SVG or HTML), not a photo. Export it as PNG or JPEG.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width < 1 or height < 1:
                    raise ValueError("The image has no pixels.")
                if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
                    raise ValueError(
                        f"The image is {width}x{height} pixels, more than this app accepts "
                        f"({max_pixels / 1e6:.0f} megapixels, {MAX_SIDE} px per side). Downscale it first."
                    )
                img.seek(0)
                if min_side and img.format in ("JPEG", "MPO") and min(width, height) >= 2 * min_side:
                    img.draft(None, (min_side, min_side))  # PIL picks the largest scale that stays >= this
                img.load()
                size = _oriented_size(img, (width, height))
                ImageOps.exif_transpose(img, in_place=True)  # in place: a 12 MP copy costs 30 ms
                return _to_rgb(img), size
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError("The image declares an enormous size (a decompression bomb?); it was not decoded.") from exc
    except UnidentifiedImageError as exc:
        raise ValueError("This file is not an image format we can read (JPEG, PNG, WebP, BMP, TIFF or GIF).") from exc
    except (OSError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise ValueError(f"The image file is damaged or truncated and cannot be decoded ({exc}).") from exc
    except MemoryError as exc:
        raise ValueError("The image is too large to decode in memory. Downscale it first.") from exc


def _oriented_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The file's (width, height) ``size`` as shown: EXIF orientations 5-8 turn the image a quarter."""
    return (size[1], size[0]) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (size[0], size[1])


def file_size(source) -> tuple[int, int]:
    """(width, height) of an image file as shown (after EXIF orientation), from its header alone."""
    with Image.open(io.BytesIO(_read_bytes(source))) as img:
        return _oriented_size(img, img.size)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        arr = (np.nan_to_num(arr) * 255 + 0.5).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def image_hash(image: np.ndarray) -> str:
    """Short content hash of a decoded image (shape + pixels)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(memoryview(np.ascontiguousarray(image)).cast("B"))  # the pixel bytes, without a copy
    return h.hexdigest()[:16]


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to size x size (aspect not kept), antialiased."""
    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=None))


def downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The photo with its longer side at most ``max_side`` (area-averaged), unchanged if already small."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """The model's view of a photo: the whole image resized to size x size, pixels in [0, 1], [1, 3, S, S].

    The models are trained on whole (squashed) images, so no crop is taken and every pixel box maps
    back to the original photo by a plain scaling (see ``geometry.to_original``).

    A float image [size, size, 3] (an adversarial image as the attack left it, not rounded to 8 bits) is
    taken as it is: it is already at the model's size, and resizing or rounding would change the attack.
    """
    if image.dtype != np.uint8:
        if image.shape != (size, size, 3):
            raise ValueError(f"a float image must already be {size}x{size}x3, got {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return to_tensor(resize_rgb(image, size)).unsqueeze(0)


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """Pixels [B, 3, S, S] in [0, 1] -> B images [S, S, 3] uint8, clamped and rounded: what a file would
    hold, and what the app and the figure tool analyse after an attack."""
    pixels = (x.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(p) for p in pixels]


def list_image_folder(root) -> tuple[list[str], list[tuple[str, int]]]:
    """ImageFolder layout: ``root/<class>/<image>``. Returns (class names, [(path, label)])."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Data folder {root} does not exist.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected ROOT/<class>/<image> (ImageFolder layout).")
    samples = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((str(f), label))
    if not samples:
        raise ValueError(f"{root} has class folders but no images in them.")
    return classes, samples


def cached_folder(root, size: int, cache_dir=None, progress: bool = True):
    """Decode an ImageFolder once into uint8 tensors [N, 3, size, size] + labels, cached on disk.

    The cache key covers the folder path, the file list and the size, so a changed folder is re-decoded.
    """
    from tqdm import tqdm

    classes, samples = list_image_folder(root)
    key = hashlib.sha256(f"{Path(root).resolve()}|{size}|".encode())
    for path, label in samples:
        key.update(f"{path}:{label};".encode())
    cache_dir = Path(cache_dir or os.environ.get("MGNET_CACHE", Path.home() / ".cache" / "mgnet"))
    cache_file = cache_dir / f"folder-{key.hexdigest()[:16]}-{size}.pt"
    if cache_file.exists():
        blob = torch.load(cache_file, weights_only=True)
        return classes, blob["images"], blob["labels"]
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    for i, (path, _) in enumerate(
        tqdm(samples, desc=f"decoding {Path(root).name} at {size}px", disable=not progress, unit="img")
    ):
        try:
            decoded = load_image(path)
        except ValueError as exc:  # say which of thousands of files it was
            raise ValueError(f"{path}: {exc}") from None
        images[i] = torch.from_numpy(resize_rgb(decoded, size)).permute(2, 0, 1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_save({"images": images, "labels": labels}, cache_file)
    return classes, images, labels
