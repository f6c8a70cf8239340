"""``python -m pfode.cli`` is the ``pfode`` command."""

import sys

from . import main

sys.exit(main())
