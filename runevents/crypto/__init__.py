"""Envelope encryption of the events' contents: key-encryption keys, threads' data keys, sealed records."""
