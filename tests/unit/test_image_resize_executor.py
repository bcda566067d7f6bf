"""The IMAGE_RESIZE executor: modes, sources, formats, limits and path confinement."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gevent.threadpool import ThreadPool
from PIL import Image

from jobworker.adapters.executors.image_resize import ImageResizeExecutor
from jobworker.domain.errors import InvalidPayload, JobFailed
from jobworker.domain.model import Job


class CountingThreadPool(ThreadPool):  # type: ignore[misc]  # gevent is untyped
    """A real threadpool that counts what it was given, to show the work runs on it."""

    spawned = 0

    def spawn(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.spawned += 1
        return super().spawn(func, *args, **kwargs)


class FakeFetcher:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls: list[tuple[str, int, float]] = []

    def get_bytes(self, url: str, max_bytes: int, timeout_s: float) -> bytes:
        self.calls.append((url, max_bytes, timeout_s))
        return self.body


@pytest.fixture
def threadpool() -> Iterator[CountingThreadPool]:
    pool = CountingThreadPool(2)
    yield pool
    pool.kill()


@pytest.fixture
def input_root(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    return root


@pytest.fixture
def output_root(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    root.mkdir()
    return root


@pytest.fixture
def executor(input_root: Path, output_root: Path, threadpool: ThreadPool) -> ImageResizeExecutor:
    return ImageResizeExecutor(input_root, output_root, threadpool, http_client=None)


def png_bytes(size: tuple[int, int], color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def three_stripes(width: int, height: int) -> bytes:
    """Red left quarter, green middle half, blue right quarter."""
    image = Image.new("RGB", (width, height), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, width // 4, height))
    image.paste((0, 0, 255), (width * 3 // 4, 0, width, height))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's calling card."""
    data = bytearray(png_bytes((1, 1)))
    ihdr_start = 8 + 4  # signature, then the IHDR chunk's length
    data[ihdr_start + 4 : ihdr_start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start : ihdr_start + 4 + 13]))
    data[ihdr_start + 4 + 13 : ihdr_start + 4 + 17] = struct.pack(">I", crc)
    return bytes(data)


def resize(executor: ImageResizeExecutor, **payload: object) -> dict[str, Any]:
    output = executor.execute(Job(id="job-1", type="IMAGE_RESIZE", payload=json.dumps(payload)))
    result: dict[str, Any] = json.loads(output)
    return result


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


class TestModes:
    @pytest.mark.parametrize(
        ("mode", "expected"),
        [("fit", (100, 50)), ("fill", (100, 100)), ("exact", (100, 100))],
    )
    def test_resize_modes_produce_the_expected_size(
        self,
        executor: ImageResizeExecutor,
        input_root: Path,
        output_root: Path,
        mode: str,
        expected: tuple[int, int],
    ) -> None:
        (input_root / "wide.png").write_bytes(png_bytes((400, 200)))

        result = resize(
            executor, source="wide.png", width=100, height=100, mode=mode, destination="r.png"
        )

        assert (result["width"], result["height"]) == expected
        with Image.open(output_root / "r.png") as written:
            assert written.size == expected
            assert written.format == "PNG"

    def test_fit_scales_small_images_up_to_the_box(
        self, executor: ImageResizeExecutor, input_root: Path
    ) -> None:
        (input_root / "small.png").write_bytes(png_bytes((50, 25)))

        result = resize(executor, source="small.png", width=100, height=100, destination="s.png")

        assert (result["width"], result["height"]) == (100, 50)

    def test_fit_never_makes_a_side_zero_pixels(
        self, executor: ImageResizeExecutor, input_root: Path
    ) -> None:
        (input_root / "strip.png").write_bytes(png_bytes((1000, 1)))

        result = resize(executor, source="strip.png", width=10, height=10, destination="s.png")

        assert (result["width"], result["height"]) == (10, 1)

    def test_fill_crops_the_centre(
        self, executor: ImageResizeExecutor, input_root: Path, output_root: Path
    ) -> None:
        (input_root / "stripes.png").write_bytes(three_stripes(400, 200))

        resize(
            executor,
            source="stripes.png",
            width=100,
            height=100,
            mode="fill",
            destination="c.png",
        )

        with Image.open(output_root / "c.png") as cropped:
            rgb = cropped.convert("RGB")
            for x in (2, 50, 97):
                red, green, blue = rgb.getpixel((x, 50))  # type: ignore[misc]
                assert green > 200
                assert red < 60
                assert blue < 60


class TestOutput:
    def test_output_describes_the_written_file(
        self, executor: ImageResizeExecutor, input_root: Path, output_root: Path
    ) -> None:
        (input_root / "a.png").write_bytes(png_bytes((64, 64)))

        result = resize(executor, source="a.png", width=32, height=32, destination="t/x/a.webp")

        written = (output_root / "t/x/a.webp").read_bytes()
        assert result["destination"] == "t/x/a.webp"
        assert result["bytes"] == len(written)
        assert result["sha256"] == hashlib.sha256(written).hexdigest()
        assert [path.name for path in (output_root / "t/x").iterdir()] == ["a.webp"]

    @pytest.mark.parametrize(
        ("format_field", "destination", "pillow_format"),
        [
            (None, "a.jpg", "JPEG"),
            ("jpg", "a.jpeg", "JPEG"),
            ("GIF", "a.gif", "GIF"),
            ("webp", "a.webp", "WEBP"),
            ("PNG", "no-extension", "PNG"),
        ],
    )
    def test_formats(
        self,
        executor: ImageResizeExecutor,
        output_root: Path,
        format_field: str | None,
        destination: str,
        pillow_format: str,
    ) -> None:
        source = data_url(png_bytes((20, 20), (10, 20, 30, 128), mode="RGBA"))
        payload: dict[str, object] = {"source": source, "width": 10, "height": 10}
        if format_field:
            payload["format"] = format_field

        resize(executor, destination=destination, **payload)

        with Image.open(output_root / destination) as written:
            assert written.format == pillow_format
            assert written.size == (10, 10)

    def test_an_existing_file_is_replaced(
        self, executor: ImageResizeExecutor, output_root: Path
    ) -> None:
        (output_root / "a.png").write_bytes(b"old")

        resize(executor, source=data_url(png_bytes((8, 8))), width=4, height=4, destination="a.png")

        assert (output_root / "a.png").read_bytes().startswith(b"\x89PNG")

    def test_a_directory_in_the_way_is_refused_and_no_temporary_file_is_left(
        self, executor: ImageResizeExecutor, output_root: Path
    ) -> None:
        (output_root / "taken.png").mkdir()

        with pytest.raises(InvalidPayload, match="'taken.png' is a directory"):
            resize(
                executor,
                source=data_url(png_bytes((8, 8))),
                width=4,
                height=4,
                destination="taken.png",
            )

        assert [path.name for path in output_root.iterdir()] == ["taken.png"]

    def test_pillow_runs_on_the_given_threadpool(
        self, executor: ImageResizeExecutor, threadpool: CountingThreadPool
    ) -> None:
        resize(executor, source=data_url(png_bytes((8, 8))), width=4, height=4, destination="a.png")

        assert threadpool.spawned == 1


class TestSources:
    def test_base64_data_url(self, executor: ImageResizeExecutor) -> None:
        result = resize(
            executor, source=data_url(png_bytes((30, 10))), width=15, height=15, destination="d.png"
        )

        assert (result["width"], result["height"]) == (15, 5)

    def test_url_sources_go_through_the_http_client(
        self, input_root: Path, output_root: Path, threadpool: ThreadPool
    ) -> None:
        fetcher = FakeFetcher(png_bytes((40, 40)))
        executor = ImageResizeExecutor(
            input_root, output_root, threadpool, fetcher, max_source_bytes=5000, fetch_timeout_s=3
        )

        resize(
            executor, source="https://img.example/a.png", width=20, height=20, destination="u.png"
        )

        assert fetcher.calls == [("https://img.example/a.png", 5000, 3)]
        assert (output_root / "u.png").exists()

    def test_url_sources_are_refused_without_an_http_client(
        self, executor: ImageResizeExecutor
    ) -> None:
        with pytest.raises(InvalidPayload, match="URL sources are disabled"):
            resize(
                executor, source="https://img.example/a.png", width=2, height=2, destination="a.png"
            )

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ("missing.png", "no file 'missing.png' in the input directory"),
            ("sub", "'sub' is not a regular file"),
            ("../secret.png", "must not contain '..'"),
            ("/etc/passwd", "must be a path relative to its root directory"),
            ("escape/secret.png", "leads outside its root directory"),
            ("ftp://host/a.png", "unsupported scheme 'ftp'"),
            ("data:image/png,abc", "data URL must look like"),
            ("data:image/png;base64,@@@", "not valid base64"),
        ],
    )
    def test_bad_sources_are_refused(
        self,
        executor: ImageResizeExecutor,
        tmp_path: Path,
        input_root: Path,
        source: str,
        message: str,
    ) -> None:
        (tmp_path / "secret.png").write_bytes(png_bytes((4, 4)))
        (input_root / "sub").mkdir()
        (input_root / "escape").symlink_to(tmp_path)

        with pytest.raises(InvalidPayload) as raised:
            resize(executor, source=source, width=2, height=2, destination="a.png")

        assert message in str(raised.value)


class TestLimits:
    def test_an_image_over_max_pixels_is_refused(
        self, input_root: Path, output_root: Path, threadpool: ThreadPool
    ) -> None:
        executor = ImageResizeExecutor(input_root, output_root, threadpool, None, max_pixels=99)

        with pytest.raises(InvalidPayload, match=r"10x10 \(100 pixels\), over the 99-pixel limit"):
            resize(
                executor,
                source=data_url(png_bytes((10, 10))),
                width=2,
                height=2,
                destination="a.png",
            )

    def test_a_header_claiming_a_huge_canvas_is_refused_before_decoding(
        self, executor: ImageResizeExecutor, output_root: Path
    ) -> None:
        # Over our 40-megapixel default, under Pillow's own limits: our check refuses it.
        bomb = data_url(png_claiming_size(8_000, 8_000))

        with pytest.raises(InvalidPayload, match=r"8000x8000 \(64000000 pixels\), over the"):
            resize(executor, source=bomb, width=2, height=2, destination="a.png")

        assert list(output_root.iterdir()) == []

    def test_pillows_own_bomb_error_becomes_an_invalid_payload(
        self, input_root: Path, output_root: Path, threadpool: ThreadPool
    ) -> None:
        executor = ImageResizeExecutor(input_root, output_root, threadpool, None, max_pixels=10**12)

        with pytest.raises(InvalidPayload, match="decompression bomb"):
            resize(
                executor,
                source=data_url(png_claiming_size(30_000, 30_000)),
                width=2,
                height=2,
                destination="a.png",
            )

    def test_a_source_over_max_source_bytes_is_refused(
        self, input_root: Path, output_root: Path, threadpool: ThreadPool
    ) -> None:
        executor = ImageResizeExecutor(
            input_root, output_root, threadpool, None, max_source_bytes=50
        )
        large = png_bytes((64, 64), (1, 2, 3))
        (input_root / "large.png").write_bytes(large + b"\0" * 100)

        with pytest.raises(InvalidPayload, match="larger than the 50-byte source limit"):
            resize(executor, source="large.png", width=2, height=2, destination="a.png")
        with pytest.raises(InvalidPayload, match="larger than the 50-byte source limit"):
            resize(executor, source=data_url(large), width=2, height=2, destination="a.png")

    def test_a_corrupt_image_is_refused(self, executor: ImageResizeExecutor) -> None:
        with pytest.raises(InvalidPayload, match="not an image in a supported format"):
            resize(
                executor,
                source=data_url(b"not an image at all"),
                width=2,
                height=2,
                destination="a.png",
            )

    def test_a_truncated_image_is_refused(self, executor: ImageResizeExecutor) -> None:
        truncated = three_stripes(200, 200)[:300]

        with pytest.raises(InvalidPayload, match="corrupt or truncated"):
            resize(executor, source=data_url(truncated), width=2, height=2, destination="a.png")

    def test_an_unsupported_source_format_is_refused(self, executor: ImageResizeExecutor) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, "BMP")

        with pytest.raises(InvalidPayload, match="not an image in a supported format"):
            resize(
                executor, source=data_url(buffer.getvalue()), width=2, height=2, destination="a.png"
            )


class TestDestination:
    @pytest.mark.parametrize(
        ("destination", "message"),
        [
            ("../a.png", "must not contain '..'"),
            ("x/../../a.png", "must not contain '..'"),
            ("/tmp/a.png", "must be a path relative to its root directory"),
            ("escape/a.png", "leads outside its root directory"),
            ("escape-file.png", "leads outside its root directory"),
        ],
    )
    def test_destinations_outside_the_output_root_are_refused(
        self,
        executor: ImageResizeExecutor,
        tmp_path: Path,
        output_root: Path,
        destination: str,
        message: str,
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (output_root / "escape").symlink_to(outside)
        (output_root / "escape-file.png").symlink_to(outside / "victim.png")

        with pytest.raises(InvalidPayload) as raised:
            resize(
                executor,
                source=data_url(png_bytes((4, 4))),
                width=2,
                height=2,
                destination=destination,
            )

        assert message in str(raised.value)
        assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[]", "payload must be a JSON object"),
        ({"width": 1, "height": 1, "destination": "a.png"}, "field 'source' is required"),
        ({"source": "a.png", "width": 1, "height": 1}, "field 'destination' is required"),
        ({"source": "a.png", "height": 1, "destination": "a.png"}, "field 'width' is required"),
        (
            {"source": "a.png", "width": 0, "height": 1, "destination": "a.png"},
            "field 'width' must be between 1 and 10000, got 0",
        ),
        (
            {"source": "a.png", "width": 1, "height": 10_001, "destination": "a.png"},
            "field 'height' must be between 1 and 10000",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "mode": "crop", "destination": "a.png"},
            "field 'mode' must be one of fit, fill, exact, got 'crop'",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "format": "TIFF", "destination": "a"},
            "field 'format' must be one of PNG, JPEG, WEBP, GIF, got 'TIFF'",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "format": "PNG", "destination": "a.jpg"},
            "field 'format' is PNG but the destination extension '.jpg' says JPEG",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "destination": "a.bmp"},
            "field 'format' is required when the destination has no image extension",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "destination": "a.jpg", "quality": 0},
            "field 'quality' must be between 1 and 100",
        ),
        (
            {"source": "a.png", "width": 1, "height": 1, "destination": "a.png", "size": 1},
            "unknown payload field(s) 'size'",
        ),
    ],
)
def test_invalid_payloads_are_rejected_naming_the_problem(
    executor: ImageResizeExecutor, payload: object, message: str
) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)

    with pytest.raises(InvalidPayload) as raised:
        executor.execute(Job(id="job-1", type="IMAGE_RESIZE", payload=text))

    assert message in str(raised.value)


def test_an_unusable_destination_directory_fails_the_job(
    executor: ImageResizeExecutor, output_root: Path
) -> None:
    (output_root / "file.png").write_bytes(b"a file, not a directory")

    with pytest.raises(JobFailed, match="cannot create 'file.png/a.png' in the output directory"):
        resize(
            executor,
            source=data_url(png_bytes((4, 4))),
            width=2,
            height=2,
            destination="file.png/a.png",
        )


class TestRootFolders:
    """The roots are not made at start (a SLEEP-only worker leaves no folders): the
    output root is made by the first image written, a missing input root fails the job."""

    def test_a_missing_output_root_is_made_by_the_first_image_written(
        self, input_root: Path, tmp_path: Path, threadpool: ThreadPool
    ) -> None:
        output_root = tmp_path / "not" / "yet"
        executor = ImageResizeExecutor(input_root, output_root, threadpool, http_client=None)

        output = resize(
            executor, source=data_url(png_bytes((4, 4))), width=2, height=2, destination="a.png"
        )

        assert output["destination"] == "a.png"
        assert (output_root / "a.png").read_bytes().startswith(b"\x89PNG")

    def test_a_missing_input_root_fails_the_job_naming_the_setting(
        self, output_root: Path, tmp_path: Path, threadpool: ThreadPool
    ) -> None:
        input_root = tmp_path / "nothing-here"
        executor = ImageResizeExecutor(input_root, output_root, threadpool, http_client=None)

        with pytest.raises(JobFailed) as failed:
            resize(executor, source="a.png", width=2, height=2, destination="a.png")

        assert str(failed.value) == (
            f"field 'source': the worker's input folder {input_root} (IMAGE_INPUT_ROOT)"
            " does not exist, so 'a.png' cannot be read from it"
        )
        assert not input_root.exists()

    def test_a_missing_file_in_the_input_root_is_still_the_jobs_fault(
        self, executor: ImageResizeExecutor
    ) -> None:
        with pytest.raises(InvalidPayload, match="no file 'a.png' in the input directory"):
            resize(executor, source="a.png", width=2, height=2, destination="a.png")
