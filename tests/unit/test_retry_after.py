"""Retry-After (RFC 9110, 10.2.3): how long a 429 or 503 asks the next attempt to wait."""

from __future__ import annotations

import calendar

import pytest
from requests.structures import CaseInsensitiveDict

from jobworker.adapters.executors.safe_http import (
    HttpResponse,
    raise_for_http_status,
    retry_after_s,
)
from jobworker.domain.errors import JobFailed, RetryableJobError

# 2026-10-21 07:28:00 GMT, and a clock two minutes before it.
WHEN = calendar.timegm((2026, 10, 21, 7, 28, 0))


def two_minutes_before() -> float:
    return WHEN - 120.0


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0)])
def test_delay_seconds(value: str, seconds: float) -> None:
    assert retry_after_s(value, now=two_minutes_before) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2026 07:28:00 GMT",  # IMF-fixdate
        "Wednesday, 21-Oct-26 07:28:00 GMT",  # obsolete RFC 850
        "Wed Oct 21 07:28:00 2026",  # obsolete asctime: no zone, read as GMT
    ],
)
def test_an_http_date_is_the_time_left_until_it(value: str) -> None:
    assert retry_after_s(value, now=two_minutes_before) == 120.0


def test_a_date_in_the_past_means_now() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=two_minutes_before) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "120 s",
        "Tue, 31 Feb 2026 00:00:00 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "\xb2",  # "²": a digit to str.isdigit, and a Latin-1 byte a header can carry
    ],
)
def test_anything_else_is_no_retry_after(value: str | None) -> None:
    assert retry_after_s(value, now=two_minutes_before) is None


@pytest.mark.parametrize("digits", [400, 5000])
def test_a_number_too_big_to_convert_is_a_very_long_wait_not_a_crash(digits: int) -> None:
    # Above 4300 digits int() refuses the text; above 308 a float cannot hold the int.
    wait_s = retry_after_s("9" * digits)

    assert wait_s is not None
    assert wait_s > 10**9


def answer(status: int, **headers: str) -> HttpResponse:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return HttpResponse("https://x.org/", status, "Reason", CaseInsensitiveDict(named), b"")


@pytest.mark.parametrize("status", [429, 503])
def test_a_429_or_503_carries_its_retry_after_and_says_it(status: int) -> None:
    with pytest.raises(RetryableJobError) as raised:
        raise_for_http_status(answer(status, Retry_After="2"), "GET https://x.org/")

    assert raised.value.retry_after_s == 2.0
    assert str(raised.value) == f"GET https://x.org/ answered {status} Reason (Retry-After: 2 s)"


@pytest.mark.parametrize("status", [500, 502, 504, 408, 425])
def test_other_retryable_statuses_ignore_retry_after(status: int) -> None:
    with pytest.raises(RetryableJobError) as raised:
        raise_for_http_status(answer(status, Retry_After="2"), "GET https://x.org/")

    assert raised.value.retry_after_s is None
    assert "Retry-After" not in str(raised.value)


@pytest.mark.parametrize("header", [None, "soon"])
def test_a_503_without_a_usable_retry_after_is_retried_on_the_backoff_alone(
    header: str | None,
) -> None:
    response = answer(503) if header is None else answer(503, Retry_After=header)

    with pytest.raises(RetryableJobError) as raised:
        raise_for_http_status(response, "GET https://x.org/")

    assert raised.value.retry_after_s is None
    assert str(raised.value) == "GET https://x.org/ answered 503 Reason"


def test_a_huge_retry_after_still_raises_retryable() -> None:
    with pytest.raises(RetryableJobError) as raised:
        raise_for_http_status(answer(503, Retry_After="9" * 400), "GET https://x.org/")

    assert raised.value.retry_after_s is not None


def test_a_final_status_with_retry_after_is_still_final() -> None:
    with pytest.raises(JobFailed, match="answered 404"):
        raise_for_http_status(answer(404, Retry_After="2"), "GET https://x.org/")
