"""Reading declared settings: raw values from ``.env``, the environment and flags, each
parsed by its declaration on first use, and every problem found in one pass.

``definitions.Settings`` is the one subclass; it adds the declarations and the rules
between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dynaconf import Dynaconf

from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import with_unit
from jobworker.entrypoints.settings.declaration import (
    DEFAULT,
    DERIVED,
    DOTENV,
    ENVIRONMENT,
    FLAG,
    ConfigurationErrors,
    Origin,
    Setting,
)
from jobworker.entrypoints.settings.table import rows_in_force
from jobworker.entrypoints.unknown_variables import UnknownVariable, unknown_variables

T = TypeVar("T")

# dynaconf loads ``.env`` into the environment; it parses no variable itself (no
# loaders): ours are read as the exact strings they are, so unrelated variables (even
# DYNACONF_*) can never upset parsing, and ``KAFKA_GROUP_ID=1.10`` stays the group
# ``1.10``, not the number 1.1.
OWN_PREFIX = "JOBWORKER_DYNACONF"


class SettingValues:
    """Typed, validated settings; each declared attribute is one setting, parsed on first
    use.

    Lazy on purpose: a file-to-file run must not demand Kafka settings. Every value a
    run needs is read by ``validate_for_run`` before anything starts, so a mistake is
    found at start-up, not at the first job.
    """

    declared: ClassVar[list[Setting[Any]]] = []
    by_name: ClassVar[dict[str, Setting[Any]]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.declared = [v for v in vars(cls).values() if isinstance(v, Setting)]
        cls.by_name = {entry.name: entry for entry in cls.declared}

    def __init__(
        self, values: Mapping[str, Any], origins: Mapping[str, Origin] | None = None
    ) -> None:
        """``values``: raw strings by variable, ours and others (the rest of the
        environment: ``unknown`` lists those that look like a misspelt setting);
        ``origins``: where each came from (the environment, if not said)."""
        self._raw = {k: v for k, v in values.items() if k in self.by_name}
        self._origins = dict(origins or {})
        self._cache: dict[str, Any] = {}
        self.unknown: list[UnknownVariable] = unknown_variables(
            {name: self._origins.get(name, Origin(ENVIRONMENT)).source for name in values},
            self.by_name,
        )

    @classmethod
    def load(
        cls: type[S], dotenv: Path | None = None, flags: Mapping[str, tuple[str, str]] | None = None
    ) -> S:
        """Read ``.env`` (from the working directory, or ``dotenv``) under the environment.

        dynaconf loads the ``.env`` file into the environment (variables already set
        win). ``flags`` maps a variable to the option and text given on the command
        line; a flag wins over both.
        """
        if dotenv is not None and not dotenv.is_file():
            raise ConfigurationError("--env-file", f"{dotenv} is not a readable file")
        before = set(os.environ)
        try:
            loader = Dynaconf(
                envvar_prefix=OWN_PREFIX,
                environments=False,
                load_dotenv=True,
                dotenv_path=str(dotenv) if dotenv else None,
                loaders=[],  # not even its global DYNACONF_* variables
            )
            loader.get(OWN_PREFIX)  # dynaconf is lazy: this is what reads the file
        except Exception as error:
            raise ConfigurationError(str(dotenv or ".env"), f"cannot be read: {error}") from None
        values = dict(os.environ)
        origins = {name: Origin(ENVIRONMENT if name in before else DOTENV) for name in values}
        for name, (flag, text) in (flags or {}).items():
            values[name] = text
            origins[name] = Origin(FLAG, flag)
        return cls(values, origins)

    def value_of(self, setting: Setting[T]) -> T:
        if setting.name not in self._cache:
            self._cache[setting.name] = self._parse(setting)
        value: T = self._cache[setting.name]
        return value

    def given(self, setting: Setting[T]) -> T | None:
        """The value of a setting that may be required elsewhere, or None if unset."""
        return None if self.is_unset(setting) else self.value_of(setting)

    def raw(self, setting: Setting[Any]) -> str:
        """The text a set setting was given, stripped."""
        return str(self._raw[setting.name]).strip()

    def origin(self, setting: Setting[Any]) -> str:
        """default, .env, environment, flag (``--x``) or derived."""
        origin = self._origins.get(setting.name)
        if origin is None or self.is_unset(setting):
            return DERIVED if setting.derive is not None else DEFAULT
        return f"{FLAG} {origin.flag}" if origin.flag else origin.source

    def is_unset(self, setting: Setting[Any]) -> bool:
        raw = self._raw.get(setting.name)
        return raw is None or (not str(raw).strip() and setting.empty_means_default)

    def name_of(self, setting: Setting[Any]) -> str:
        """What an error names: the flag, if one gave the value, else the variable."""
        origin = self._origins.get(setting.name)
        return origin.flag if origin is not None and origin.flag else setting.name

    def _parse(self, setting: Setting[Any]) -> Any:
        raw = self._raw.get(setting.name)
        text = "" if raw is None else str(raw).strip()
        if not text:
            if raw is not None and not setting.empty_means_default:
                raise ConfigurationError(
                    self.name_of(setting),
                    "is set but empty: give a value, or unset it for the default",
                )
            if setting.needed_when is not None and not setting.may_be_none:
                raise ConfigurationError(setting.name, setting.required())
            if setting.derive is not None:
                return setting.derive(self)
            if setting.default is None:
                return None
            text = setting.default
        if setting.duration:
            text = with_unit(text, setting.name)
        try:
            return setting.parse(text)
        except ValueError as error:
            raise ConfigurationError(self.name_of(setting), str(error)) from None
        except ConfigurationError as error:
            raise ConfigurationError(self.name_of(setting), error.problem) from None

    # -- checking ---------------------------------------------------------------------

    def validate_for_run(self) -> None:
        """Parse every setting this run uses and check the rules between them.

        Raises the ``ConfigurationError`` of the one problem, or ``ConfigurationErrors``
        with every one of several.
        """
        raise_problems(self.problems())

    def problems(self) -> list[ConfigurationError]:
        """Every problem of the settings this run uses, each naming its variable: the
        settings in the table's order, then the rules between them."""
        found: list[ConfigurationError] = []
        unused = self.unused_prefixes()
        present: dict[str, Any] = {}
        wrong: set[str] = set()
        for entry in self.declared:
            # Whether a required one is given is dynaconf's check, below. One of an
            # adapter this run does not use is still checked when given: a typo
            # (KAFKA_ORDERING=bogus) would otherwise surface only on the next run.
            needed_or_unused = entry.needed_when is not None or entry.name.startswith(unused)
            if self.is_unset(entry) and needed_or_unused:
                continue
            try:
                value = self.value_of(entry)
            except ConfigurationError as error:
                found.append(error)
                wrong.add(entry.name)
                continue
            if value is not None and not entry.name.startswith(unused):
                present[entry.name] = value
        found += self.broken_rules(present, wrong)
        # A setting derived from a wrong one repeats its problem.
        return list({str(problem): problem for problem in found}.values())

    def unused_prefixes(self) -> tuple[str, ...]:
        """The prefixes of the adapters' variables this run does not use."""
        return ()

    def broken_rules(self, present: Mapping[str, Any], wrong: set[str]) -> list[ConfigurationError]:
        """The rules between settings that ``present`` (parsed values) breaks; a
        ``wrong`` one (its own problem found) is not missing."""
        return []

    # -- showing ----------------------------------------------------------------------

    def in_force(self) -> list[tuple[str, str, str]]:
        """(variable, value as text, where it came from) of every setting: a value given
        as it was given, even a wrong one (durations with their unit); secrets masked."""
        return rows_in_force(self, self.declared)


S = TypeVar("S", bound=SettingValues)


def raise_problems(problems: list[ConfigurationError]) -> None:
    """Raises the one problem, or ``ConfigurationErrors`` with every one of several."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigurationErrors(problems)
