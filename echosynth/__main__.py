"""python -m echosynth VERB ...: the echosynth command."""

import sys

from echosynth.cli import main

sys.exit(main())
