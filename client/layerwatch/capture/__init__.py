"""Capture (internal): where measurements start.

`watch` puts forward hooks on the chosen modules (`selection`), `clock` counts the
run's steps from optimizer step hooks, `parameters` reads weights, gradients and
weight change at the optimizer step, `model_tree` records the module tree once.
Each hands tensors to `layerwatch.reduce` and the resulting records to
`layerwatch.delivery`.
"""
