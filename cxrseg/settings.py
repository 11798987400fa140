"""Weights carry their settings: the config values that define a network and its input travel with its weights.

A state dict does not say which network it fits. Trained at ``image_size: [640, 512]`` and loaded by a config that
says ``[256, 256]``, lung_vae's weights fail to load, and a fully convolutional network's load and run at a size they
never saw. So the training run writes, beside the best model ``models/model.pt`` (which stays a plain state dict, as
MONAI Label, ``ckpt_export``, the Model Zoo and the opacity bundle's lung stage load it), a settings file
``models/model.json``: the values of the config ids that ``train.yaml`` lists in ``weights_settings``,
e.g. ``{"image_size": [640, 512], "features": 16, ...}``.

As in the Model Zoo, the configs state the shipped weights' settings as plain values, and other weights bring theirs
as one more config file, the last one, whose ids replace the config's (``--config_file
"['.../inference.yaml','RUN/model.json']"``; :func:`settings_config_files` for Python callers). The config needs no
lookup, and :func:`check_settings` stops a run whose values differ from the settings file of the weights it loads
before any image is read, naming every differing id with both values, the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".json"
# what a training run writes beside its best model; its checkpoints share these settings
RUN_SETTINGS = "model.json"


class SettingsMismatchError(ValueError):
    """A config value of a setting the weights were trained with differs from the recorded one."""


def settings_path(ckpt_path: str | Path) -> Path:
    """Where the settings of a checkpoint are written: its name with ``.json`` (``models/model.pt`` ->
    ``models/model.json``)."""
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


def settings_file(ckpt_path: str | Path) -> Path | None:
    """The settings file of a checkpoint: ``<stem>.json`` beside it, else ``model.json`` in its folder (a training run
    writes its ``checkpoint_*.pt`` and ``model.json`` from the same settings); None where there is neither."""
    for path in (settings_path(ckpt_path), Path(ckpt_path).with_name(RUN_SETTINGS)):
        if path.is_file():
            return path
    return None


def _load(path: Path) -> dict[str, Any]:
    settings = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: a settings file holds one mapping of config ids to values, got {type(settings)}")
    return settings


def read_settings(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The settings of the weights ``ckpt_path`` (:func:`settings_file`), or None where they have no settings file."""
    path = settings_file(ckpt_path)
    return None if path is None else _load(path)


def settings_config_files(config_files: Sequence[str | Path], ckpt_path: str | Path) -> list[str]:
    """``config_files`` with the settings file of ``ckpt_path`` appended where it has one, so that the ids it records
    replace the configs' values: how a caller reads configs for weights other than the ones they state."""
    path = settings_file(ckpt_path)
    return [str(file) for file in config_files] + ([str(path)] if path is not None else [])


def check_settings(ckpt_path: str | Path, settings: Mapping[str, Any]) -> bool:
    """Raise :class:`SettingsMismatchError` naming every id of ``settings`` (the config's values) that differs from the
    settings file of ``ckpt_path``; True otherwise, so that a config can require the check
    (``_requires_: "@settings_check"``) before it reads any image. Weights without a settings file check nothing."""
    path = settings_file(ckpt_path)
    if path is None:
        logger.info(
            "%s has no settings file (%s or %s beside it): the network and its input follow the config",
            ckpt_path,
            settings_path(ckpt_path).name,
            RUN_SETTINGS,
        )
        return True
    recorded = _load(path)
    differences = [
        f"{name} is {_as_json(value)!r} in the config but {recorded[name]!r} in the weights' settings"
        for name, value in settings.items()
        if name in recorded and _as_json(value) != recorded[name]
    ]
    if differences:
        raise SettingsMismatchError(
            f"{ckpt_path} was trained with other settings than the config states ({path}): "
            + "; ".join(differences)
            + f". Add {path} as the last --config_file (its ids replace the config's), or give these ids the"
            " weights' values."
        )
    return True
