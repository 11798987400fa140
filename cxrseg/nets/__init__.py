"""Network building blocks shared by several bundles (MONAI lacks them)."""

from .convlstm import BiConvLSTM, ConvLSTM, ConvLSTMCell

__all__ = ["BiConvLSTM", "ConvLSTM", "ConvLSTMCell"]
