"""A test stand-in for deer-flow's package (see ../README.md)."""
