"""Probe (internal): what every layer makes of a fixed held-out batch.

`inputs` checks and holds the probe batch, `capture` runs it through the model
with temporary hooks (`layers` collects, reduces and packs each layer's outputs;
`state` puts the model back and keeps autocast off), `attribution` adds integrated
gradients (Captum), `prober` decides when a `Watch` probes and queues the payloads.
"""
