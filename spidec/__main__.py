"""``python -m spidec``: the same as the ``spidec`` command."""

from .cli import main

raise SystemExit(main())
