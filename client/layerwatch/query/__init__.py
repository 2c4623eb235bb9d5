"""Query (internal; use `layerwatch.Api`): read what a server stored as NumPy arrays.

`api` holds `Api` and `RunRef`, `results` the types its queries return.
"""
