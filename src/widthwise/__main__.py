"""``python -m widthwise`` is the ``widthwise`` command."""

import sys

from .cli import main

sys.exit(main())
