"""What each known data source means by its masks and how it is split (docs/data.md, "Label conventions").

Sources differ in what their lung masks include and in whether a redistributor's split must be kept. Mixing
them blindly teaches a network two definitions of "lung", so each source's convention is recorded here, tagged
on its datalist entries (``lung_convention``) and stated beside its figures in the model cards. A source not
listed here is split by patient and its lung convention is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass

LUNGS_WITHOUT_RETROCARDIAC = "retrocardiac_excluded"
LUNGS_WITH_RETROCARDIAC = "retrocardiac_included"
UNKNOWN_CONVENTION = "unknown"
# datalist key naming the lung-mask convention of the entry's source
LUNG_CONVENTION_KEY = "lung_convention"

SPLIT_BY_PATIENT = "patient"
SPLIT_BY_SOURCE = "source_split"


@dataclass(frozen=True)
class SourceConvention:
    """How a source's lung masks were drawn and how its cases split into training, validation and test."""

    lungs: str = UNKNOWN_CONVENTION
    split: str = SPLIT_BY_PATIENT


KNOWN_SOURCES: dict[str, SourceConvention] = {
    # SCR masks: the lung hidden behind the heart and below the diaphragm's dome is left out
    "jsrt": SourceConvention(lungs=LUNGS_WITHOUT_RETROCARDIAC),
    "montgomery": SourceConvention(lungs=LUNGS_WITHOUT_RETROCARDIAC),
    "shenzhen": SourceConvention(lungs=LUNGS_WITHOUT_RETROCARDIAC),
    # radiologists' masks of the whole lung, the part behind the heart included
    "covid_opacity": SourceConvention(lungs=LUNGS_WITH_RETROCARDIAC),
    # no patient ids: the redistributor's train / val split is the only one that keeps patients apart
    "covid_qu_ex": SourceConvention(lungs=LUNGS_WITHOUT_RETROCARDIAC, split=SPLIT_BY_SOURCE),
}


def convention_of(source: str) -> SourceConvention:
    """The recorded convention of a source (by its folder name), or the default for a source we do not know."""
    return KNOWN_SOURCES.get(source, SourceConvention())
