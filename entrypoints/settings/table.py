"""The settings as tables: the README's (every setting and its default, also
``settings --defaults``) and ``jobworker settings``'s (every value in force and its
source)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import with_unit
from jobworker.entrypoints.settings.declaration import Setting

if TYPE_CHECKING:
    from jobworker.entrypoints.settings.reading import SettingValues

MASK = "****"
NONE = "—"  # unset without a default, required and missing, or derived from a wrong one


def markdown_table(declared: Iterable[Setting[Any]]) -> str:
    """The Markdown table of every setting and its default."""
    rows = ["| Variable | Meaning | Default |", "|---|---|---|"]
    for entry in declared:
        rows.append(f"| `{entry.name}` | {entry.help} | {entry.default_text()} |")
    return "\n".join(rows)


def rows_in_force(
    settings: SettingValues, declared: Iterable[Setting[Any]]
) -> list[tuple[str, str, str]]:
    """(variable, value as text, where it came from) of every declared setting."""
    return [(entry.name, _shown(settings, entry), settings.origin(entry)) for entry in declared]


def _shown(settings: SettingValues, setting: Setting[Any]) -> str:
    if not settings.is_unset(setting):
        text = settings.raw(setting)
        if setting.secret:
            return MASK
        return with_unit(text, setting.name) if setting.duration else text or '""'
    try:
        value = settings.value_of(setting)
    except ConfigurationError:
        return NONE
    if value is None:
        return NONE
    return MASK if setting.secret else _as_text(setting, value)


def _as_text(setting: Setting[Any], value: Any) -> str:
    if setting.default is not None and setting.derive is None:
        return setting.default  # as written in the declaration (``1s``, not 1.0)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
