"""Code of the opacity_unet bundle: the lung stage (a lung bundle of the collection run in-process), the
lung crop of the network input, the severity measurements (opacity % per lung and zone, ROC-AUC of
opacity % for ICU admission and death), and the nested cross-validated choice of the opacity threshold
(operating_point.py). The network is MONAI's FlexibleUNet with exportable
ResNet shortcuts (network.py); the loss is MONAI's DiceFocalLoss."""

# A bundle copied with `cp -r` keeps scripts/cxrseg as a relative link to the repository's cxrseg/, which dangles
# outside the repository: fail on the first import of the bundle's code and say how to copy it (README, "Layout").
import pathlib

_shared_code = pathlib.Path(__file__).parent / "cxrseg"
if not (_shared_code / "__init__.py").is_file():
    raise ImportError(
        f"{_shared_code} does not resolve: it links to the repository's shared code, which this copy of the bundle "
        f"lacks. Copy a bundle with `python -m tools package {_shared_code.parents[1].name}` (a Model Zoo zip) or "
        "`cp -rL`, which carry the shared code along."
    )
