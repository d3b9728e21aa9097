"""The bus: what writers publish to the topic and what the projector makes of it."""
