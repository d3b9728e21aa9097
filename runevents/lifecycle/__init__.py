"""The log's lifecycle: retention policies (which events a thread keeps) and their expiry."""
