"""runevents: storage for the event streams of AI agent runs."""
