import sys

from wrn.cli import main

sys.exit(main())
