"""``python -m fctc``: the ``fctc`` command line (``fctc train | eval | transcribe``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
