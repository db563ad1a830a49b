"""Networks of the bsr methods (official module/parameter names, see each module)."""
