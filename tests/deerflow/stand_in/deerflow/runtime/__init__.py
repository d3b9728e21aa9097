"""A test stand-in for deer-flow's runtime package."""
