import sys

from labbridge.cli import main

sys.exit(main())
