"""Job limits as pure functions: what is over a limit, and why, in one short line."""

from __future__ import annotations

import json
import time

import pytest

from jobworker.application.job_limits import JobLimits, nested_deeper_than
from jobworker.domain.model import Job

LIMITS = JobLimits()


def job(**fields: object) -> Job:
    values: dict[str, object] = {"id": "j-1", "type": "SLEEP", "payload": '{"ms": 1}'}
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


class TestNesting:
    def test_a_hundred_thousand_levels_are_found_without_recursion_or_parsing(self) -> None:
        deep = "[" * 100_000 + "]" * 100_000
        started = time.perf_counter()
        assert nested_deeper_than(deep, 64)
        assert time.perf_counter() - started < 0.1

    @pytest.mark.parametrize(("depth", "deeper"), [(64, False), (65, True)])
    def test_the_limit_itself_is_allowed(self, depth: int, deeper: bool) -> None:
        text = '{"a": ' * depth + "1" + "}" * depth
        assert nested_deeper_than(text, 64) is deeper

    def test_siblings_do_not_add_up(self) -> None:
        text = json.dumps({"rows": [[1], [2], {"x": [3]}] * 10_000})
        assert not nested_deeper_than(text, 4)
        assert nested_deeper_than(text, 3)

    @pytest.mark.parametrize(
        "text",
        [
            json.dumps({"output": "[" * 1000}),
            json.dumps({"output": '\\"[[[' * 100}),  # escaped quotes keep the string open
            json.dumps(["{" * 100, "]" * 100, "[" * 100]),
        ],
    )
    def test_brackets_inside_strings_do_not_count(self, text: str) -> None:
        assert not nested_deeper_than(text, 2)

    def test_an_unterminated_string_hides_nothing_the_parser_would_read(self) -> None:
        assert not nested_deeper_than('["' + "[" * 1000, 2)

    def test_unclosed_brackets_count_as_depth(self) -> None:
        assert nested_deeper_than("[" * 100, 64)

    def test_plain_text_with_few_brackets_passes(self) -> None:
        assert not nested_deeper_than("0.25 [see note 1] {draft}", 64)


class TestViolation:
    def test_a_normal_job_has_none(self) -> None:
        normal = job(metadata={"trace": "t-1", "tenant": "acme"})
        assert LIMITS.violation(normal) is None

    @pytest.mark.parametrize(
        ("over", "reason"),
        [
            ({"id": "i" * 900_000}, "job id is 900000 characters, above the 256 limit"),
            ({"type": "T" * 129}, "job type is 129 characters, above the 128 limit"),
            (
                {"payload": json.dumps({"output": "x" * 1_048_576})},
                "invalid payload: 1048590 bytes, above the 1048576-byte limit",
            ),
            (
                {"payload": "[" * 100_000 + "]" * 100_000},
                "invalid payload: nested deeper than 64 levels",
            ),
            (
                {"metadata": {f"k{i}": "v" for i in range(65)}},
                "metadata has 65 entries, above the 64 limit",
            ),
            (
                {"metadata": {"k" * 257: "v"}},
                "metadata key is 257 characters, above the 256 limit",
            ),
            (
                {"metadata": {"trace": "v" * 4097}},
                "metadata value of 'trace' is 4097 characters, above the 4096 limit",
            ),
            (
                {"metadata": {f"k{i}": "v" * 4000 for i in range(5)}},
                "metadata is 20010 bytes, above the 16384-byte limit",
            ),
        ],
    )
    def test_each_limit_gives_a_short_reason(self, over: dict[str, object], reason: str) -> None:
        assert LIMITS.violation(job(**over)) == reason

    def test_payload_size_is_counted_in_utf8_bytes(self) -> None:
        limits = JobLimits(max_payload_bytes=100)
        assert limits.violation(job(payload="é" * 50)) is None
        assert limits.violation(job(payload="é" * 51)) == (
            "invalid payload: 102 bytes, above the 100-byte limit"
        )

    def test_limits_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="max_payload_depth must be at least 1"):
            JobLimits(max_payload_depth=0)


class TestCappedMetadata:
    def test_metadata_within_the_limits_is_copied_whole(self) -> None:
        metadata = {"trace": "t-1", "tenant": "acme"}
        assert LIMITS.capped_metadata(metadata) == metadata

    def test_entries_are_kept_in_order_up_to_the_first_over_a_limit(self) -> None:
        metadata = {"a": "1", "big": "v" * 900_000, "c": "3"}
        assert LIMITS.capped_metadata(metadata) == {"a": "1"}

    def test_the_byte_cap_bounds_the_copy(self) -> None:
        limits = JobLimits(max_metadata_bytes=10)
        assert limits.capped_metadata({"a": "1234", "b": "1234", "c": "1"}) == {
            "a": "1234",
            "b": "1234",
        }

    def test_the_entry_cap_bounds_the_copy(self) -> None:
        capped = LIMITS.capped_metadata({f"k{i}": "v" for i in range(1000)})
        assert list(capped) == [f"k{i}" for i in range(64)]
