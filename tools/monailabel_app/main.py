"""MONAI Label app serving every bundle of the collection for 2-D chest radiographs (PNG/JPEG).

Start it with the MONAI Label environment (``tools/setup_monailabel_env.sh VENV``) first on ``PATH``: the
``monailabel`` launcher runs whichever ``python`` comes first there::

    export PATH="$PWD/VENV/bin:$PATH"
    monailabel start_server --app tools/monailabel_app --studies IMAGES_DIR [--conf bundles DIR] [--conf train NAMES]

Every folder of the bundles directory (default: the repository's ``bundles/``) that has
``configs/inference.yaml`` and ``models/model.pt`` becomes an inference model named after the folder. Training
(``BundleTrainTask``) is offered for the bundles named in ``--conf train`` (comma-separated, default ``all``;
``none`` switches it off); it trains on the datastore's final labels, each a label map whose values are the
metadata ``channel_def`` of that bundle, and writes ``models/model.pt`` in the bundle folder it serves from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lib.radiograph_tasks import RadiographInferTask, RadiographTrainTask, bundle_folders
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

RADIOGRAPH_EXTENSIONS = ["*.png", "*.jpg", "*.jpeg"]
DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


class CXRSegmentationApp(MONAILabelApp):
    """Inference for every complete bundle, training for those chosen by ``--conf train``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles_dir = Path(conf.get("bundles", DEFAULT_BUNDLES_DIR)).resolve()
        if not self.bundles_dir.is_dir():
            raise FileNotFoundError(f"bundles folder {self.bundles_dir} does not exist (--conf bundles DIR)")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CXR segmentation bundles",
            description="Chest X-ray segmentation models of the cxrseg MONAI bundle collection",
        )

    def init_datastore(self) -> Datastore:
        """A local folder of radiographs: MONAI Label's default extensions are NIfTI only."""
        return LocalDatastore(
            self.studies,
            extensions=RADIOGRAPH_EXTENSIONS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for folder in bundle_folders(self.bundles_dir):
            task = RadiographInferTask(str(folder), self.conf)
            if task.is_valid():
                infers[folder.name] = task
            else:
                logger.warning("bundle %s is not served: no models/model.pt or configs/inference.yaml", folder)
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        wanted = self.conf.get("train", "all").strip().lower()
        if wanted == "none":
            return {}
        names = None if wanted == "all" else {name.strip() for name in wanted.split(",")}
        trainers: dict[str, TrainTask] = {}
        for folder in bundle_folders(self.bundles_dir):
            if names is not None and folder.name.lower() not in names:
                continue
            task = RadiographTrainTask(str(folder), self.conf)
            if task.is_valid():
                trainers[folder.name] = task
        return trainers
