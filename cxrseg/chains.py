"""The post-processing chains of the lung bundles, built once for ``inference.yaml`` and ``evaluate.yaml``.

Both configs of a bundle must post-process alike, or the scores of evaluation describe another label map than
inference writes. So the chain lives here, and a config names only what differs between bundles: how the network
answers (class scores or one lung probability), the label values of the anatomy filter and steps of its own at
network resolution. Every chain makes the label map at network resolution, applies what anatomy implies there
(:class:`cxrseg.postprocess.AnatomyFilterd`, cheap at that size) and brings the result to the input's size by
inverting the preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from monai.transforms import Activationsd, AsDiscreted, CopyItemsd, DeleteItemsd, Invertd, InvertibleTransform

from .bundle import as_flag
from .postprocess import AnatomyFilterd, ChannelArgmaxd, ScoresWithinLabelsd

Step = Callable[[dict], dict]


def _anatomy_steps(anatomy: bool | str, keys: str, lung_labels: Sequence[int], heart_label: int | None) -> list[Step]:
    """The anatomy filter, or nothing where the config switches it off (``--anatomy_postprocessing false``
    arrives as a string, which :func:`cxrseg.bundle.as_flag` reads)."""
    if not as_flag(anatomy):
        return []
    return [AnatomyFilterd(keys=keys, lung_labels=lung_labels, heart_label=heart_label)]


def label_map_steps(
    preprocessing: InvertibleTransform,
    output: Literal["softmax", "sigmoid"],
    anatomy: bool | str = True,
    lung_labels: Sequence[int] = (1,),
    heart_label: int | None = None,
    refinements: Sequence[Step] = (),
) -> list[Step]:
    """The post-processing of ``pred`` from the network's output to the label map at the input's size.

    ``softmax``: class scores. The label map is made on a copy (``label_map``), filtered, and the scores are
    confined to it (:class:`ScoresWithinLabelsd`), brought to the input's size bilinearly and argmaxed there, so
    that borders fall where the scores cross, not on the network's pixel grid. ``sigmoid``: one lung channel,
    thresholded at 0.5, filtered, ``refinements`` applied (lung_vae: the paper's closing) and enlarged by nearest
    neighbours. ``preprocessing`` is the chain the input went through, which ``Invertd`` undoes.
    """
    if output == "softmax":
        return [
            Activationsd(keys="pred", softmax=True),
            CopyItemsd(keys="pred", names="label_map"),
            AsDiscreted(keys="label_map", argmax=True),
            *_anatomy_steps(anatomy, "label_map", lung_labels, heart_label),
            *refinements,
            ScoresWithinLabelsd(keys="pred", label_key="label_map"),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            ChannelArgmaxd(keys="pred"),
            DeleteItemsd(keys="label_map"),
        ]
    if output == "sigmoid":
        return [
            Activationsd(keys="pred", sigmoid=True),
            AsDiscreted(keys="pred", threshold=0.5),
            *_anatomy_steps(anatomy, "pred", lung_labels, heart_label),
            *refinements,
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
        ]
    raise ValueError(f"output must be 'softmax' or 'sigmoid', got {output!r}")


def scoring_steps(num_classes: int | None = None, reference_key: str = "reference") -> list[Step]:
    """After :func:`label_map_steps` in evaluation: the reference kept at full resolution (``reference_key``)
    becomes ``label``, so that resizing never touches what the scores compare with; with ``num_classes``, the
    prediction and the reference one-hot, as the metrics of class scores take them."""
    one_hot = num_classes is not None
    return [
        *([AsDiscreted(keys="pred", to_onehot=num_classes)] if one_hot else []),
        DeleteItemsd(keys="label"),
        CopyItemsd(keys=reference_key, names="label"),
        *([AsDiscreted(keys="label", to_onehot=num_classes)] if one_hot else []),
    ]
