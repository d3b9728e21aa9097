"""The bus backend's store URL: `kafka://brokers/topic?database=...` (runevents.store.opener names it)."""

from __future__ import annotations

from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.store import BusRunEventStore
from runevents.events import DEFAULT_MAX_TRACE_CONTENT
from runevents.lifecycle.blob_urls import BUS_BLOB_SCHEMA
from runevents.store.opener import StoreUrl


def open_url(url: StoreUrl) -> BusRunEventStore:
    """A bus store for `kafka://brokers/topic?database=<percent-encoded URL>&projection=&schema=&blobs=`."""
    database = url.pop("database")
    if not url.parts.netloc or not database:
        raise url.error(
            "a kafka URL names the brokers and the read tables' database, e.g. "
            "kafka://broker:9092/run-events?database=postgresql%3A%2F%2Fuser%40db%2Frunevents"
        )
    topic = url.parts.path.strip("/") or DEFAULT_TOPIC
    projection = url.pop("projection", DEFAULT_PROJECTION) or DEFAULT_PROJECTION
    schema = url.pop("schema")
    blobs = url.blobs()
    url.refuse_unknown()
    store = BusRunEventStore(
        url.parts.netloc,
        database,
        topic=topic,
        projection=projection,
        schema=schema,
        max_trace_content=DEFAULT_MAX_TRACE_CONTENT
        if url.max_trace_content is None
        else url.max_trace_content,
    )
    if blobs is not None:
        # Opened once the store is: the blobs table is read through the store's own engine (one pool,
        # disposed with the store), outside the projection's schema. The URL was checked above.
        store._blobs = blobs.open(store._engine, schema=BUS_BLOB_SCHEMA)
    return store
