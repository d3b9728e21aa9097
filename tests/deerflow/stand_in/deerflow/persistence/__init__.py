"""A test stand-in for deer-flow's persistence package."""
