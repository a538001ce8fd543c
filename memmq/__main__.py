"""
C{python -m memmq}: the same as the C{memmq} command.
"""

import sys

from memmq.script import main

sys.exit(main())
