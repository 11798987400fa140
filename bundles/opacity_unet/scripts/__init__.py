"""Code of the opacity_unet bundle: the lung stage (a lung bundle of the collection run in-process), the
lung crop of the network input, and the severity measurements (opacity % per lung and zone, ROC-AUC of
opacity % for ICU admission and death). The network is MONAI's FlexibleUNet with exportable
ResNet shortcuts (network.py); the loss is MONAI's DiceFocalLoss."""
