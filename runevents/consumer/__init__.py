"""The projector: consumes the topic and writes the read tables."""
