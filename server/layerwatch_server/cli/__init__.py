"""Tooling beside the server's core: the ``layerwatch`` command, its demo, and serving in-process.

``commands`` is the command line (``layerwatch`` and ``python -m
layerwatch_server.cli``); ``demo`` trains a small network against a local
server; ``serving`` runs a server on a thread of another program (the demo,
a notebook, the tests). The core (``main``, ``api``, ``store``, ``views``)
imports none of them.
"""

from layerwatch_server.cli.commands import main

__all__ = ["main"]
