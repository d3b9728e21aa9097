"""The bus: the topic, what writers publish to it, and the projector that makes the read tables of it."""
