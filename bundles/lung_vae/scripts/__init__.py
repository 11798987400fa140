"""lung_vae bundle code: the U-Net with variational data imputation, the ELBO loss and its inferer, the paper's
post-processing, the evaluation-only lobar opacifier, lung measurements and the uncertainty output."""
