import sys

from e2mc.cli import main

sys.exit(main())
