# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitor's configuration: ``monitor.yaml`` read with ruamel.yaml and checked at start-up.

Each component class declares the keys it reads as :class:`ParameterGroup` objects in its
``parameter_groups`` class attribute. :meth:`MonitorParameters.validate` checks the file against
the union of the groups of the configured components, so an unknown group or key, a wrong type
or a missing required key stops start-up with one message naming the key and the file.
"""

import dataclasses
import os
import pathlib
from typing import Any, Iterable

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from om.lib.exceptions import OmConfigurationError
from om.lib.package_data import packaged_file

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a map"}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One configuration key.

    Attributes:
        name: the key, as written in ``monitor.yaml``.
        type: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``list`` or ``dict``.
        required: whether the key must be present.
        default: the value used when the key is absent (``None``: no value).
        element_type: for lists, the type of every element.
        choices: the allowed values, if limited.
        nullable: whether ``null`` is an allowed value.
        description: one line for the documentation, with units.
        minimum: for numbers, the smallest allowed value, if limited.
        maximum: for numbers, the largest allowed value, if limited.
    """

    name: str
    type: type
    required: bool = False
    default: Any = None
    element_type: type | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """A group (top-level map) of ``monitor.yaml`` and the keys a component reads from it."""

    name: str
    parameters: tuple[Parameter, ...]


def _matches(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _plain(value: Any) -> Any:
    # ruamel returns its own map/list types: turn them into plain Python ones.
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class MonitorParameters:
    """The parsed configuration file.

    Args:
        filename: path of the YAML file.

    Raises:
        OmConfigurationError: when the file is missing, is not YAML, or is not a map of maps.
    """

    def __init__(self, filename: str | pathlib.Path) -> None:
        self.filename = str(filename)
        try:
            with open(filename, encoding="utf-8") as stream:
                content = YAML(typ="safe", pure=True).load(stream)
        except FileNotFoundError:
            raise OmConfigurationError(f"configuration file {self.filename} does not exist")
        except (OSError, YAMLError) as error:
            reason = " ".join(str(error).split())
            raise OmConfigurationError(f"cannot read {self.filename}: {reason}")
        if not isinstance(content, dict):
            raise OmConfigurationError(f"{self.filename}: the top level must be a map of groups")
        self._groups: dict[str, dict[str, Any]] = {}
        for group, keys in content.items():
            if not isinstance(keys, dict):
                raise OmConfigurationError(f"{self.filename}: group '{group}' must be a map")
            self._groups[str(group)] = _plain(keys)
        self._schema: dict[str, dict[str, Parameter]] = {}

    def _error(self, group: str, key: str, reason: str) -> OmConfigurationError:
        return OmConfigurationError(f"{self.filename}: {group}/{key}: {reason}")

    def validate(self, groups: Iterable[ParameterGroup], *, complete: bool = True) -> None:
        """Checks every group and key of the file against the declared ones.

        Args:
            groups: the groups the configured components read; groups of the same name merge.
            complete: whether ``groups`` are all the groups there are (False: the file's other
                groups are not checked, e.g. before the component classes are known).

        Raises:
            OmConfigurationError: naming the file and the first bad ``group/key``.
        """
        schema: dict[str, dict[str, Parameter]] = {}
        for group in groups:
            keys = schema.setdefault(group.name, {})
            for parameter in group.parameters:
                keys.setdefault(parameter.name, parameter)
        for group_name, values in self._groups.items():
            if group_name not in schema and not complete:
                continue
            if group_name not in schema:
                known = ", ".join(sorted(schema))
                raise OmConfigurationError(
                    f"{self.filename}: unknown group '{group_name}' (known groups: {known})"
                )
            for key in values:
                if key not in schema[group_name]:
                    raise self._error(group_name, key, "unknown key")
        for group_name, keys in schema.items():
            values = self._groups.get(group_name, {})
            for parameter in keys.values():
                self._check(group_name, parameter, values)
        self._schema = schema

    def _check(self, group: str, parameter: Parameter, values: dict[str, Any]) -> None:
        if parameter.name not in values:
            if parameter.required:
                raise self._error(group, parameter.name, "required key is missing")
            return
        value = values[parameter.name]
        if value is None:
            if parameter.nullable or not parameter.required:
                return
            raise self._error(group, parameter.name, "must have a value, got null")
        if not _matches(value, parameter.type):
            raise self._error(
                group, parameter.name,
                f"must be {_TYPE_NAMES[parameter.type]}, got {type(value).__name__} {value!r}",
            )
        if parameter.type is list and parameter.element_type is not None:
            for element in value:
                if not _matches(element, parameter.element_type):
                    raise self._error(
                        group, parameter.name,
                        f"every element must be {_TYPE_NAMES[parameter.element_type]}, "
                        f"got {element!r}",
                    )
        if parameter.minimum is not None and value < parameter.minimum:
            raise self._error(group, parameter.name,
                              f"must be at least {parameter.minimum!r}, got {value!r}")
        if parameter.maximum is not None and value > parameter.maximum:
            raise self._error(group, parameter.name,
                              f"must be at most {parameter.maximum!r}, got {value!r}")
        if parameter.choices is not None and value not in parameter.choices:
            allowed = ", ".join(repr(choice) for choice in parameter.choices)
            raise self._error(group, parameter.name, f"must be one of {allowed}, got {value!r}")

    def get(self, group: str, name: str) -> Any:
        """Returns the value of ``group/name``, or its declared default when absent or null.

        Raises:
            OmConfigurationError: when the key was not declared by any component (a bug).
        """
        try:
            parameter = self._schema[group][name]
        except KeyError:
            raise OmConfigurationError(f"{self.filename}: {group}/{name} was never declared")
        value = self._groups.get(group, {}).get(name)
        if value is None:
            return parameter.default
        if parameter.type is float:
            return float(value)
        return value

    def raw_group(self, group: str) -> dict[str, Any]:
        """Returns the keys of ``group`` as written in the file (empty when absent)."""
        return dict(self._groups.get(group, {}))

    def resolve_path(self, path: str) -> str:
        """Resolves a file path written in the configuration.

        A relative path is relative to the folder the configuration file was named in, as the
        user sees it: a symbolic link ``monitor.yaml`` in the repository's root resolves
        ``calibration/...`` in the root, not in the link target's folder. A relative path that
        names no file there but a file shipped in ``om/data`` (the geometry files) resolves to
        the shipped file, so a copied ``monitor.yaml`` still finds ``jungfrau1M.geom``.

        Returns:
            The path (the file need not exist; its reader reports a missing file).
        """
        candidate = pathlib.Path(path).expanduser()
        if candidate.is_absolute():
            return str(candidate)
        beside = pathlib.Path(os.path.abspath(self.filename)).parent / candidate
        if not beside.exists():
            shipped = packaged_file(str(candidate))
            if shipped.is_file():
                return str(shipped)
        return str(beside)
