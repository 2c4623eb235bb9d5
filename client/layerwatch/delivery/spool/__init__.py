"""The spool (internal): built batches waiting for the server, oldest first.

`base` defines `Spool` and `Outgoing`; `memory` keeps them in memory, `disk` in
append-only checksummed files (`files`) that outlive the process, with probe
payloads beside them (`probe_files`).
"""
