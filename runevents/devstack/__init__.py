"""Local services for the dev stack and tests."""
