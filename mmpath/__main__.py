import sys

from mmpath.cli import main

sys.exit(main())
