"""A dead letter too large to write is cut to fit, never retried for ever."""

from __future__ import annotations

from jobworker.adapters.kafka.dlq import MAX_BATCH_BYTES, fitted_dead_letter

OURS = [("x-dlq-reason", b"value is not a JobTask"), ("x-dlq-source-offset", b"7")]


def test_a_dead_letter_that_fits_is_kept_whole_even_with_a_null_value() -> None:
    headers = [*OURS, ("x-dlq-source-key", b"k")]
    assert fitted_dead_letter(b"k", None, headers) == (b"k", None, headers)
    assert fitted_dead_letter(b"k", b"v" * 10, headers) == (b"k", b"v" * 10, headers)


def test_the_repeated_key_header_goes_first_then_the_value() -> None:
    key, value = b"k" * 60_000, b"v" * 980_000
    fitted_key, fitted_value, headers = fitted_dead_letter(
        key, value, [*OURS, ("x-dlq-source-key", key)]
    )
    assert fitted_key == key
    assert fitted_value == b""
    assert dict(headers) == dict(OURS) | {"x-dlq-value-dropped-bytes": b"980000"}


def test_a_key_too_large_even_alone_is_left_out_too() -> None:
    key = b"k" * (MAX_BATCH_BYTES + 1)
    fitted_key, fitted_value, headers = fitted_dead_letter(key, b"v", list(OURS))
    assert (fitted_key, fitted_value) == (None, b"")
    assert dict(headers)["x-dlq-key-dropped-bytes"] == str(len(key)).encode()


def test_the_records_own_headers_go_last() -> None:
    theirs = [(f"h{i}", b"x" * 100_000) for i in range(11)]
    _, _, headers = fitted_dead_letter(b"k", b"v", [*theirs, *OURS])
    names = [name for name, _ in headers]
    assert names == [
        "x-dlq-reason",
        "x-dlq-source-offset",
        "x-dlq-value-dropped-bytes",
        "x-dlq-source-headers-dropped",
    ]
