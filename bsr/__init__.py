"""bsr: blind super-resolution methods (PDM-SR, RealSR, USR_DA, USRNet, DANv2) trained on bsrops."""
