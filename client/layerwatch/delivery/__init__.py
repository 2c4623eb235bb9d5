"""Delivery (internal): from records to the server, never blocking training.

`queue` is the bounded queue the training thread puts records on; `batching`
turns records into columnar `wire.Batch`es; `spool` keeps built batches until the
server takes them (in memory, or on disk for `layerwatch sync`); `probes` does the
same for probe payloads; `sender` is the background loop; `transport` is the one
place HTTP happens (headers, gzip, answers to errors) and `backoff` says when to
try again; `sync` replays spools a process left behind.
"""
