"""IMAGE_INPUT_ROOT and IMAGE_OUTPUT_ROOT at start: checked, never made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.container import image_folder


@pytest.mark.parametrize("access", [os.R_OK, os.W_OK])
def test_a_missing_folder_is_not_made(tmp_path: Path, access: int) -> None:
    folder = tmp_path / "data" / "images" / "out"

    assert image_folder(str(folder), "IMAGE_OUTPUT_ROOT", access) == folder

    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_used_as_it_is(tmp_path: Path) -> None:
    assert image_folder(str(tmp_path), "IMAGE_INPUT_ROOT", os.R_OK) == tmp_path


@pytest.mark.parametrize("access", [os.R_OK, os.W_OK])
def test_a_file_where_the_folder_should_be_is_refused(tmp_path: Path, access: int) -> None:
    (tmp_path / "f").write_text("")

    with pytest.raises(ConfigurationError, match=r"IMAGE_OUTPUT_ROOT: .*/f is not a folder"):
        image_folder(str(tmp_path / "f"), "IMAGE_OUTPUT_ROOT", access)


def test_an_output_folder_that_could_not_be_made_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")

    with pytest.raises(ConfigurationError, match=r"cannot create .*/f/out: .*/f is not a folder"):
        image_folder(str(tmp_path / "f" / "out"), "IMAGE_OUTPUT_ROOT", os.W_OK)
