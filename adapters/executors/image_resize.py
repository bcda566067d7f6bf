"""IMAGE_RESIZE: resize an image into a file under the output directory.

Payload ``{"source": "...", "width": 320, "height": 240, "mode": "fit",
"format": "PNG", "destination": "thumbs/a.png", "quality": 85}``:

- ``source``: an http(s) URL, a ``data:image/...;base64,...`` URL, or a path
  relative to the input directory (see ``image_source``);
- ``width``/``height``: the box, 1..``max_output_side`` pixels each;
- ``mode``: ``fit`` keeps the aspect ratio inside the box (default), ``fill`` covers
  the box and crops the centre, ``exact`` stretches to the box;
- ``format``: PNG, JPEG (or JPG), WEBP or GIF; when absent, taken from the
  destination's extension, and it must agree with that extension;
- ``destination``: a path relative to the output directory; missing directories are
  created, the file is replaced atomically;
- ``quality``: 1..100 for JPEG and WEBP (default 85).

Output ``{"destination": "thumbs/a.png", "width": 320, "height": 180, "bytes": 12345,
"sha256": "<hex of the written file>"}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, cast

from gevent.threadpool import ThreadPool

from jobworker.adapters.executors.contained_paths import MAX_RELATIVE_PATH_BYTES, resolve_inside
from jobworker.adapters.executors.image_source import (
    ImageSource,
    SourceFetcher,
    decode_data,
    max_source_chars,
    parse_source,
    read_file,
)
from jobworker.adapters.executors.image_transform import (
    FORMAT_ALIASES,
    FORMAT_BY_EXTENSION,
    FORMATS,
    RESIZE_MODES,
    RenderedImage,
    ResizeSpec,
    render,
)
from jobworker.adapters.executors.payload_fields import (
    load_object,
    optional_int,
    optional_str,
    required_int,
    required_str,
)
from jobworker.domain.errors import InvalidPayload, JobFailed
from jobworker.domain.model import Job

MIB = 1024 * 1024
_FIELDS = frozenset(("source", "width", "height", "mode", "format", "destination", "quality"))
# Enough for every name the executor knows ("exact", "JPEG"); a longer one is a typo.
_MAX_NAME_CHARS = 16
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ResizeRequest:
    """A validated IMAGE_RESIZE payload."""

    source: ImageSource
    spec: ResizeSpec
    destination: str


def parse_resize_request(
    payload: str, max_output_side: int, max_source_bytes: int = 20 * MIB
) -> ResizeRequest:
    """Validate an IMAGE_RESIZE payload; raise ``InvalidPayload`` naming the bad field."""
    fields = load_object(payload, _FIELDS)
    source_field = required_str(fields, "source", max_length=max_source_chars(max_source_bytes))
    source = parse_source(source_field, max_source_bytes)
    destination = required_str(fields, "destination", max_length=MAX_RELATIVE_PATH_BYTES)
    width = required_int(fields, "width", minimum=1, maximum=max_output_side)
    height = required_int(fields, "height", minimum=1, maximum=max_output_side)
    mode = optional_str(fields, "mode", default="fit", max_length=_MAX_NAME_CHARS).lower()
    if mode not in RESIZE_MODES:
        raise InvalidPayload(f"field 'mode' must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    spec = ResizeSpec(
        width=width,
        height=height,
        mode=mode,
        format=_output_format(
            optional_str(fields, "format", default="", max_length=_MAX_NAME_CHARS), destination
        ),
        quality=optional_int(fields, "quality", default=85, minimum=1, maximum=100),
    )
    return ResizeRequest(source=source, spec=spec, destination=destination)


class ImageResizeExecutor:
    """Runs IMAGE_RESIZE jobs; Pillow and file I/O run on ``threadpool``, never the hub.

    ``threadpool`` is a dedicated, bounded ``gevent.threadpool.ThreadPool`` (not the
    hub's, which gRPC needs); its size bounds how many images are processed at once.
    ``http_client`` fetches URL sources; with None, URL sources are refused.
    """

    def __init__(
        self,
        input_root: Path,
        output_root: Path,
        threadpool: ThreadPool,
        http_client: SourceFetcher | None,
        max_source_bytes: int = 20 * MIB,
        max_pixels: int = 40_000_000,
        max_output_side: int = 10_000,
        fetch_timeout_s: float = 10.0,
    ) -> None:
        self.input_root = input_root.resolve()
        self.output_root = output_root.resolve()
        self.threadpool = threadpool
        self.http_client = http_client
        self.max_source_bytes = max_source_bytes
        self.max_pixels = max_pixels
        self.max_output_side = max_output_side
        self.fetch_timeout_s = fetch_timeout_s

    def execute(self, job: Job) -> str:
        request = parse_resize_request(job.payload, self.max_output_side, self.max_source_bytes)
        fetched = self._fetch(request.source) if request.source.kind == "url" else None
        return _run_in(self.threadpool, self._resize_and_write, request, fetched)

    def _fetch(self, source: ImageSource) -> bytes:
        if self.http_client is None:
            raise InvalidPayload("field 'source': URL sources are disabled on this worker")
        return self.http_client.get_bytes(
            source.location, max_bytes=self.max_source_bytes, timeout_s=self.fetch_timeout_s
        )

    def _resize_and_write(self, request: ResizeRequest, fetched: bytes | None) -> str:
        destination = resolve_inside(self.output_root, request.destination, "destination")
        source_bytes = fetched if fetched is not None else self._read_local(request.source)
        rendered = render(source_bytes, request.spec, self.max_pixels)
        _write_atomically(self.output_root, destination, rendered.data, request.destination)
        return _output(destination.relative_to(self.output_root), rendered)

    def _read_local(self, source: ImageSource) -> bytes:
        if source.kind == "data":
            return decode_data(source.location, self.max_source_bytes)
        return read_file(self.input_root, source.location, self.max_source_bytes)


def _output_format(requested: str, destination: str) -> str:
    extension = PurePosixPath(destination).suffix.lower()
    implied = FORMAT_BY_EXTENSION.get(extension)
    if not requested:
        if implied is None:
            raise InvalidPayload(
                "field 'format' is required when the destination has no image extension "
                f"({', '.join(FORMAT_BY_EXTENSION)})"
            )
        return implied
    chosen = FORMAT_ALIASES.get(requested.upper(), requested.upper())
    if chosen not in FORMATS:
        raise InvalidPayload(
            f"field 'format' must be one of {', '.join(FORMATS)}, got {requested!r}"
        )
    if implied is not None and implied != chosen:
        raise InvalidPayload(
            f"field 'format' is {chosen} but the destination extension {extension!r} says {implied}"
        )
    return chosen


def _write_atomically(root: Path, path: Path, data: bytes, shown: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkdir may have walked through a directory swapped for a symlink meanwhile.
        if not path.parent.resolve().is_relative_to(root):
            raise InvalidPayload(f"field 'destination' leads outside its root directory: {shown!r}")
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise JobFailed(f"cannot create {shown!r} in the output directory: {error}") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, IsADirectoryError):
            raise InvalidPayload(f"field 'destination': {shown!r} is a directory") from error
        if isinstance(error, OSError):
            raise JobFailed(f"cannot write {shown!r} in the output directory: {error}") from error
        raise


def _output(destination: Path, rendered: RenderedImage) -> str:
    return json.dumps(
        {
            "destination": destination.as_posix(),
            "width": rendered.width,
            "height": rendered.height,
            "bytes": len(rendered.data),
            "sha256": hashlib.sha256(rendered.data).hexdigest(),
        }
    )


def _run_in(threadpool: ThreadPool, function: Callable[..., _T], *args: Any) -> _T:
    """Run ``function`` on ``threadpool`` and return its result or raise its error.

    The exception travels back as a value: raised inside the pool, gevent would also
    print its traceback to stderr, and an invalid payload is not worth a traceback.
    """

    def captured() -> tuple[_T | None, Exception | None]:
        try:
            return function(*args), None
        except Exception as error:  # re-raised in the calling greenlet
            return None, error

    result, error = threadpool.spawn(captured).get()
    if error is not None:
        raise error
    return cast("_T", result)
