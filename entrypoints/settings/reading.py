"""Reading declared settings: the values given in ``.env``, the environment and flags,
held by dynaconf with where each came from, each parsed by its declaration on first use,
and every problem found in one pass.

``definitions.Settings`` is the one subclass; it adds the declarations and the rules
between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dynaconf import Dynaconf, get_history
from dynaconf.loaders.base import SourceMetadata
from dynaconf.utils.inspect import KeyNotFoundError

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


# dynaconf reads ``.env`` into the environment (variables already set win), holds each
# value given with where it came from, and checks the rules between settings (``rules``).
# It reads no variable itself (``envvar_prefix=None``): its environment loader reads every
# value as TOML (``KAFKA_GROUP_ID=1.10`` would be the number 1.1, ``true`` a boolean),
# and ours are texts the declarations parse. With ``auto_cast`` off a text such as
# ``@json {`` stays a text, never one of dynaconf's directives.
def new_config(dotenv: Path | None = None, *, load_dotenv: bool = False) -> Dynaconf:
    return Dynaconf(
        environments=False,
        envvar_prefix=None,
        settings_files=[],
        auto_cast=False,
        load_dotenv=load_dotenv,
        dotenv_path=str(dotenv) if dotenv else None,
    )


# The loaders, in dynaconf's record, of values as they were given (rules add parsed ones).
_GIVEN = frozenset({DOTENV, ENVIRONMENT, FLAG})


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
        self,
        values: Mapping[str, Any],
        origins: Mapping[str, Origin] | None = None,
        config: Dynaconf | None = None,
    ) -> None:
        """``values``: raw strings by variable, ours and others (the rest of the
        environment: ``unknown`` lists those that look like a misspelt setting);
        ``origins``: where each came from (the environment, if not said); ``config``:
        the dynaconf instance that read them (``load``), else a new one."""
        self.config = new_config() if config is None else config
        sources = {name: (origins or {}).get(name, Origin(ENVIRONMENT)) for name in values}
        for name, text in values.items():
            if name in self.by_name:
                origin = sources[name]
                source = SourceMetadata(origin.source, origin.flag or origin.source)
                self.config.set(name, str(text), loader_identifier=source, tomlfy=False)
        self._cache: dict[str, Any] = {}
        self._given_by_name: dict[str, dict[str, Any]] = {}
        self.unknown: list[UnknownVariable] = unknown_variables(
            {name: origin.source for name, origin in sources.items()}, self.by_name
        )

    @classmethod
    def load(
        cls: type[S], dotenv: Path | None = None, flags: Mapping[str, tuple[str, str]] | None = None
    ) -> S:
        """Read ``.env`` (from the working directory, or ``dotenv``) under the environment.

        dynaconf loads the ``.env`` file into the environment (variables already set
        win; the snapshot before it tells which came from where). ``flags`` maps a
        variable to the option and text given on the command line; a flag wins over both.
        """
        if dotenv is not None and not dotenv.is_file():
            raise ConfigurationError("--env-file", f"{dotenv} is not a readable file")
        before = set(os.environ)
        config = new_config(dotenv, load_dotenv=True)
        try:
            config.get("JOB_SOURCE")  # dynaconf is lazy: the first read reads the file
        except Exception as error:
            raise ConfigurationError(str(dotenv or ".env"), f"cannot be read: {error}") from None
        values = dict(os.environ)
        origins = {name: Origin(ENVIRONMENT if name in before else DOTENV) for name in values}
        for name, (flag, text) in (flags or {}).items():
            values[name] = text
            origins[name] = Origin(FLAG, flag)
        return cls(values, origins, config)

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
        return str(self._given(setting)["value"]).strip()

    def origin(self, setting: Setting[Any]) -> str:
        """default, .env, environment, flag (``--x``) or derived."""
        if self.is_unset(setting):
            return DERIVED if setting.derive is not None else DEFAULT
        given = self._given(setting)
        return f"{FLAG} {given['identifier']}" if given["loader"] == FLAG else given["loader"]

    def is_unset(self, setting: Setting[Any]) -> bool:
        given = self._given(setting)
        return not given or (not str(given["value"]).strip() and setting.empty_means_default)

    def name_of(self, setting: Setting[Any]) -> str:
        """What an error names: the flag, if one gave the value, else the variable."""
        given = self._given(setting)
        return given["identifier"] if given and given["loader"] == FLAG else setting.name

    def _given(self, setting: Setting[Any]) -> dict[str, Any]:
        """The value given for ``setting`` and where it came from (dynaconf's record:
        ``loader`` the source, ``identifier`` the flag's name), or {} if none was."""
        if setting.name not in self._given_by_name:
            try:
                history = get_history(self.config, setting.name)
            except KeyNotFoundError:
                history = []
            given = [entry for entry in history if entry["loader"] in _GIVEN]
            # What was given never changes; only the rules add parsed values after it.
            self._given_by_name[setting.name] = given[-1] if given else {}
        return self._given_by_name[setting.name]

    def _parse(self, setting: Setting[Any]) -> Any:
        given = self._given(setting)
        raw = given.get("value")
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

    def problems(self, chosen: Mapping[str, Any] | None = None) -> list[ConfigurationError]:
        """Every problem of the settings this run uses, each naming its variable: the
        settings in the table's order, then the rules between them. ``chosen`` gives
        settings a value whatever was given (``submit`` sends to Kafka in any case)."""
        found: list[ConfigurationError] = []
        chosen = chosen or {}
        unused = self.unused_prefixes(chosen)
        present: dict[str, Any] = dict(chosen)
        wrong: set[str] = set()
        for entry in self.declared:
            if entry.name in chosen:
                continue
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

    def unused_prefixes(self, chosen: Mapping[str, Any]) -> tuple[str, ...]:
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
