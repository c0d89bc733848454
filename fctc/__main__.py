"""``python -m fctc``: the ``fctc`` command line (``fctc train | eval | transcribe``).

The same program as the installed ``fctc`` script, for environments without it on
``PATH``.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
