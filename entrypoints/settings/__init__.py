"""Settings from the environment and ``.env`` (dynaconf), typed, checked once at start-up.

Each setting is declared once, as an attribute of ``Settings`` (``definitions``): its
variable is the attribute's name in capitals, with its default, meaning, parser (the
check) and, if it is needed only by one adapter, the condition under which it is
required. The container reads the typed attributes; the README table and ``jobworker
settings`` are generated from the same declarations (``table``). Every missing or
malformed value is found in one reading (``reading``), each a ``ConfigurationError``
naming the variable (or the flag that set it); the CLI prints one line for each and
exits 2. A variable that looks like a setting but is none is a warning
(``unknown_variables``).
"""

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
from jobworker.entrypoints.settings.definitions import SETTINGS, Settings, settings_table

__all__ = [
    "DEFAULT",
    "DERIVED",
    "DOTENV",
    "ENVIRONMENT",
    "FLAG",
    "SETTINGS",
    "ConfigurationErrors",
    "Origin",
    "Setting",
    "Settings",
    "settings_table",
]
