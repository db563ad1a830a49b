"""Pure-PyTorch reference implementations (the unfused baselines) and float64 loop references."""
