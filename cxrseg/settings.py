"""Weights carry their settings: the config values that define a network and its input travel with its weights.

A state dict does not say which network it fits. Trained at ``image_size: [640, 512]`` and loaded by an inference
config that says ``[256, 256]``, lung_vae's weights fail to load, and a fully convolutional network's load and run
at a size they never saw. So the training run writes, beside the best model ``models/model.pt`` (which stays a
plain state dict, as MONAI Label, ``ckpt_export``, the Model Zoo and the opacity bundle's lung stage load it), a
settings file ``models/model.json``: the values of the config ids that ``train.yaml`` lists in ``weights_settings``,
e.g. ``{"image_size": [640, 512], "features": 16, ...}``.

Evaluation and inference read it back through :class:`WeightsSettings`: their defaults for those ids are the
file's values, so the defaults of every config fit whatever weights they load, and an explicit value that
disagrees with the file stops the run, naming the id, both values and the file (:meth:`WeightsSettings.check`).
Weights without the file (trained before it existed) keep the config's own values.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".json"


class SettingsMismatchError(ValueError):
    """A config value of a setting the weights were trained with differs from the recorded one."""


def settings_path(ckpt_path: str | Path) -> Path:
    """The settings file of a checkpoint: its name with ``.json`` (``models/model.pt`` -> ``models/model.json``)."""
    return Path(ckpt_path).with_suffix(SETTINGS_SUFFIX)


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from the settings file (tuples become lists), so that values compare as written."""
    return json.loads(json.dumps(value))


def write_settings(ckpt_path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` as the settings file of ``ckpt_path``, one id per line, through a temporary file and a
    rename, so that a killed run leaves the previous file or the new one, never half of one."""
    path = settings_path(ckpt_path)
    lines = [f"  {json.dumps(name)}: {json.dumps(value)}" for name, value in _as_json(dict(settings)).items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_settings(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The settings recorded beside ``ckpt_path``, or None where there is no settings file."""
    path = settings_path(ckpt_path)
    if not path.is_file():
        return None
    settings = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: a settings file holds one mapping of config ids to values, got {type(settings)}")
    return settings


def config_file_values(config_file: str | Path) -> dict[str, Any]:
    """The top-level ids of a config file as written (nothing resolved): ``evaluate.yaml`` takes the defaults of
    weights without a settings file from ``train.yaml``, whose ids it replaces with the recorded values."""
    return dict(ConfigParser.load_config_file(str(config_file)))


class WeightsSettings:
    """The settings that the weights ``ckpt_path`` were trained with, as evaluation and inference configs read them.

    ``settings["image_size"]`` is the value recorded in the settings file beside the weights or, where the file
    does not record it (or does not exist), ``defaults["image_size"]``: the config's own value. A config names
    these as the defaults of its ids (``image_size: "$@trained_with['image_size']"``), so an id given explicitly (on
    the command line, in an override file or a parser update) replaces the lookup, and :meth:`check` compares it.
    """

    def __init__(self, ckpt_path: str | Path, defaults: Mapping[str, Any]) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.path = settings_path(ckpt_path)
        self.defaults = dict(defaults)
        self.recorded = read_settings(ckpt_path)
        if self.recorded is None:
            logger.info(
                "%s has no settings file %s: the network and its input follow the config",
                self.ckpt_path,
                self.path.name,
            )

    def __getitem__(self, name: str) -> Any:
        if self.recorded is not None and name in self.recorded:
            return self.recorded[name]
        if name not in self.defaults:
            raise KeyError(f"{name}: neither recorded in {self.path} nor given a default by the config")
        return self.defaults[name]

    def check(self, settings: Mapping[str, Any]) -> bool:
        """Raise :class:`SettingsMismatchError` naming every id of ``settings`` (the config's values) whose value
        differs from the recorded one; True otherwise, so that a config can require the check
        (``_requires_: "@settings_check"``) before it reads any image."""
        recorded = self.recorded or {}
        differences = [
            f"{name} is {_as_json(value)!r} in the config but {recorded[name]!r} in the weights' settings"
            for name, value in settings.items()
            if name in recorded and _as_json(value) != recorded[name]
        ]
        if differences:
            raise SettingsMismatchError(
                f"{self.ckpt_path} was trained with other settings than the config asks for ({self.path}): "
                + "; ".join(differences)
                + ". Leave these ids out of the overrides to use the weights' values, or load weights trained with"
                " the values given."
            )
        return True
