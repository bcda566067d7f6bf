"""The Pillow work of IMAGE_RESIZE: decode within limits, resize, encode.

Everything here is blocking and CPU-bound: call it on a dedicated threadpool, never
on the gevent hub. Only the first frame of an animated GIF or WEBP is used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from jobworker.domain.errors import InvalidPayload

ResizeMode = Literal["fit", "fill", "exact"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("fit", "fill", "exact")
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
FORMAT_ALIASES = {"JPG": "JPEG"}
FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".gif": "GIF",
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_JPEG_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class ResizeSpec:
    """What to make of the source: a ``width`` x ``height`` box, how to fill it, format."""

    width: int
    height: int
    mode: ResizeMode
    format: str
    quality: int = 85


@dataclass(frozen=True, slots=True)
class RenderedImage:
    data: bytes
    width: int
    height: int


def render(source: bytes, spec: ResizeSpec, max_pixels: int) -> RenderedImage:
    """Decode ``source``, resize it as ``spec`` says and encode it.

    Raises ``InvalidPayload`` when the source is not a PNG/JPEG/WEBP/GIF image, is
    corrupt or truncated, or has more than ``max_pixels`` pixels (checked from the
    header, before any pixel is decoded: a small file can claim a huge canvas).
    """
    image = _decode(source, spec, max_pixels)
    resized = _resize(_normalized(ImageOps.exif_transpose(image)), spec)
    buffer = io.BytesIO()
    _save(resized, spec, buffer)
    return RenderedImage(buffer.getvalue(), resized.width, resized.height)


def _decode(source: bytes, spec: ResizeSpec, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(source), formats=FORMATS)
        pixels = image.width * image.height
        if pixels == 0:
            raise InvalidPayload("source image has no pixels")
        if pixels > max_pixels:
            raise InvalidPayload(
                f"source image is {image.width}x{image.height} ({pixels} pixels), "
                f"over the {max_pixels}-pixel limit"
            )
        # JPEG can decode straight at a reduced scale, far cheaper than full size;
        # the square box keeps enough pixels whatever the EXIF rotation.
        side = max(spec.width, spec.height)
        image.draft("RGB", (side, side))
        image.load()
    except Image.DecompressionBombError as error:
        raise InvalidPayload(f"source image refused as a decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise InvalidPayload(
            f"source is not an image in a supported format ({', '.join(FORMATS)})"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidPayload(f"source image is corrupt or truncated: {error}") from error
    return image


def _normalized(image: Image.Image) -> Image.Image:
    # Palette and 1-bit images would be resized by nearest neighbour; work in RGB(A).
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def _resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    box = (spec.width, spec.height)
    if spec.mode == "fit":
        return image.resize(fitted_size(image.size, box), Image.Resampling.LANCZOS)
    if spec.mode == "fill":
        return ImageOps.fit(image, box, method=Image.Resampling.LANCZOS)
    return image.resize(box, Image.Resampling.LANCZOS)


def fitted_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with the aspect ratio of ``size`` that fits in ``box``."""
    scale = min(box[0] / size[0], box[1] / size[1])
    # Never 0 pixels: a 10000x1 strip fitted into 100x100 is 100x1, not 100x0.
    return (
        max(1, min(box[0], round(size[0] * scale))),
        max(1, min(box[1], round(size[1] * scale))),
    )


def _save(image: Image.Image, spec: ResizeSpec, buffer: io.BytesIO) -> None:
    if spec.format == "JPEG":
        if image.mode == "RGBA":
            flattened = Image.new("RGB", image.size, _JPEG_BACKGROUND)
            flattened.paste(image, mask=image.getchannel("A"))
            image = flattened
        image.save(buffer, "JPEG", quality=spec.quality, optimize=True)
    elif spec.format == "WEBP":
        image.save(buffer, "WEBP", quality=spec.quality)
    else:
        image.save(buffer, spec.format)
