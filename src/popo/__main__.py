import sys

from popo.cli import main

sys.exit(main())
