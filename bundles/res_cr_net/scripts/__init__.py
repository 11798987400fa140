"""Res-CR-Net bundle code: the network, the weighted Tanimoto loss, contour weights and lung measurements."""
