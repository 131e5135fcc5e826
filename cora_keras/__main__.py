"""`python -m cora_keras` runs the `cora-keras` command."""

import sys

from cora_keras.cli import main

sys.exit(main())
