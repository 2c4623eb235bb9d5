"""Reduce (internal): tensors to small summaries on their own device.

`statistics` computes the statistics, histograms, unit means and weight change
without host syncs; `worker` runs the same reductions for CPU tensors on a
background thread, off the training thread.
"""
