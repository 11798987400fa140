"""Tasks of the MONAI Label app (MONAI Label puts the app folder on the path, so this is ``lib``)."""
