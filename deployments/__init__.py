"""The Ray Serve layer of cascade (imports Ray; the core in `cascade/` does not)."""
