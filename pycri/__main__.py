import sys

from pycri.cli import main

sys.exit(main())
