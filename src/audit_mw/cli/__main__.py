"""``python -m audit_mw.cli``: the same as the ``audit-mw`` script."""

import sys

from audit_mw.cli import main

sys.exit(main())
