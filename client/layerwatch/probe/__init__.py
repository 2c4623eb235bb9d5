"""Probe (internal): what every layer makes of a fixed held-out batch.

`inputs` checks and holds the probe batch, `capture` runs it through the model
with temporary hooks and packs the layer outputs, `attribution` adds integrated
gradients (Captum), `prober` decides when a `Watch` probes and queues the payloads.
"""
