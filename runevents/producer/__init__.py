"""Publishing events to the topic (the bus backend's write side)."""
