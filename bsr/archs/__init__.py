"""Networks of the five methods (official module names, so released state dicts load)."""
