import sys

from oadbench.cli import main

sys.exit(main())
