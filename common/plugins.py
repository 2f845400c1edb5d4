"""A user's code named by an import path, ``"package.module:attribute"``, as in entry points.

The config names a model factory (``model``) or a loss (``loss``) this way; this module
imports it and names what went wrong in one line: the module that did not import (and how
to make it importable on every machine that runs clients), the attribute that is missing,
or a value that is not callable. The path is the whole contract: nothing here chooses code
by a name the project made up, and built-in names are looked up in their own tables
(common/models.py) before any import is tried.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from common.config import IMPORT_PATH, ConfigError

WHERE_MODULES_COME_FROM = (
    "put its folder on PYTHONPATH (every process that builds the model: the server, "
    "Simulation Engine workers and SuperNodes) or install it with pip on every machine; "
    "see docs/models.md, 'Where your module lives'"
)


class PluginError(ConfigError):
    """The code a config key names cannot be imported or used; the message says why."""

    def __init__(self, key: str, value: str, problem: str) -> None:
        ValueError.__init__(self, f"config key '{key}' = {value!r}: {problem}")
        self.key, self.value, self.allowed = key, value, problem


def is_import_path(value: str) -> bool:
    return bool(IMPORT_PATH.match(value))


@functools.lru_cache(maxsize=32)
def load_object(path: str, key: str) -> Callable[..., Any]:
    """The callable at ``path`` (``"package.module:attribute"``), imported once per process."""
    if not is_import_path(path):
        raise PluginError(key, path, "expected 'package.module:name', e.g. 'my_models:make_net'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        raise PluginError(
            key, path,
            f"module '{module_name}' cannot be imported (no module named '{missing}'); "
            + WHERE_MODULES_COME_FROM,
        ) from None  # fmt: skip
    except Exception as err:  # the user's module raised while importing: show what it said
        raise PluginError(
            key, path, f"importing module '{module_name}' raised {type(err).__name__}: {err}"
        ) from err
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise PluginError(
                key, path,
                f"module '{module_name}' has no attribute '{attribute}' (it defines: "
                f"{', '.join(_public_names(module)) or 'nothing public'})",
            )  # fmt: skip
        value = getattr(value, part)
    if not callable(value):
        raise PluginError(
            key, path, f"'{attribute}' is a {type(value).__name__}, not a function or class"
        )
    return value


def _public_names(module: Any) -> list[str]:
    names = [n for n in vars(module) if not n.startswith("_")]
    return sorted(n for n in names if callable(getattr(module, n)))[:12]
