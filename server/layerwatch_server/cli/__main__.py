"""``python -m layerwatch_server.cli``: the ``layerwatch`` command."""

import sys

from layerwatch_server.cli.commands import main

sys.exit(main())
