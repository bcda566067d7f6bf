"""How one setting is declared: its default, meaning, parser (the check), and when it is
needed; and where a value came from. ``definitions`` declares every setting with these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from dynaconf import Validator

from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import parse_duration, positive

if TYPE_CHECKING:
    from jobworker.entrypoints.settings.reading import SettingValues

T = TypeVar("T")

# Where a value in force came from (``jobworker settings``).
DEFAULT, DOTENV, ENVIRONMENT, FLAG, DERIVED = "default", ".env", "environment", "flag", "derived"


class Setting(Generic[T]):
    """One setting, declared as an attribute of ``Settings``; reading it gives its value.

    Use the constructors below (``setting``, ``optional``, ``needed``, ``derived``): they
    give the attribute its type.
    """

    name: str  # the variable: the attribute's name in capitals

    def __init__(
        self,
        default: str | None,
        meaning: str,
        parse: Callable[[str], Any],
        *,
        needed_when: Validator | None = None,
        derive: Callable[[Any], Any] | None = None,
        empty_means_default: bool = True,
        secret: bool = False,
        may_be_none: bool = False,
        duration: bool = False,
    ) -> None:
        self.default = default
        self.help = meaning
        self.parse = parse
        # Required under this condition (dynaconf checks it); unset otherwise.
        self.needed_when = needed_when
        # The value when unset, computed from other settings (``default`` is then None).
        self.derive = derive
        # Set but empty: for most settings "use the default" (compose files write `X=`);
        # for a name (a topic) it is a slip that would silently use another one.
        self.empty_means_default = empty_means_default
        self.secret = secret
        # Reads as None when unset (typed ``T | None``), even where ``needed_when`` applies.
        self.may_be_none = may_be_none
        # Written with a unit, unless the name says it (``with_unit``).
        self.duration = duration

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute
        self.name = attribute.upper()

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: SettingValues, owner: type) -> T: ...
    def __get__(self, instance: SettingValues | None, owner: type) -> Setting[T] | T:
        if instance is None:
            return self
        value: T = instance.value_of(self)
        return value

    def default_text(self) -> str:
        """The default as the README shows it."""
        if self.needed_when is not None:
            return "required"
        return "—" if self.default is None else self.default

    def required(self) -> str:
        """The problem of a missing value, when one is needed."""
        return f"is required ({self.help})"


def setting(
    default: str,
    meaning: str,
    parse: Callable[[str], T],
    *,
    empty_means_default: bool = True,
) -> Setting[T]:
    """A setting with a default."""
    return Setting(default, meaning, parse, empty_means_default=empty_means_default)


_POSITIVE_DURATION = positive(parse_duration)


def duration(
    default: str,
    meaning: str,
    parse: Callable[[str], float] = _POSITIVE_DURATION,
) -> Setting[float]:
    """A duration in seconds, written with its unit (``500ms``, ``30s``, ``5m``)."""
    return Setting(default, meaning, parse, duration=True)


def optional(
    meaning: str,
    parse: Callable[[str], T],
    *,
    secret: bool = False,
    needed_when: Validator | None = None,
) -> Setting[T | None]:
    """A setting that may be unset (None); if ``needed_when`` holds, it must be set."""
    return Setting(None, meaning, parse, secret=secret, needed_when=needed_when, may_be_none=True)


def needed(
    meaning: str,
    when: Validator,
    parse: Callable[[str], T],
) -> Setting[T]:
    """A setting without a default, required when ``when`` holds (``validate_for_run``)."""
    return Setting(None, meaning, parse, needed_when=when)


def derived(
    meaning: str,
    derive: Callable[[Any], T],
    parse: Callable[[str], T],
    *,
    empty_means_default: bool = True,
) -> Setting[T]:
    """A setting that, when unset, is computed from others (``meaning`` says how)."""
    return Setting(None, meaning, parse, derive=derive, empty_means_default=empty_means_default)


class ConfigurationErrors(ConfigurationError):  # noqa: N818 - several ConfigurationErrors
    """Several problems found in one reading of the settings; ``errors`` has each.

    Itself the first of them, for whoever handles one ``ConfigurationError``.
    """

    def __init__(self, errors: Sequence[ConfigurationError]) -> None:
        super().__init__(errors[0].variable, errors[0].problem)
        self.errors = list(errors)


@dataclass(frozen=True)
class Origin:
    """Where a raw value came from; ``flag`` is the option that gave it, if one did."""

    source: str
    flag: str | None = None
