"""``python -m HRMMPredictLib.cli``: the ``hrmm`` command line."""

import sys

from HRMMPredictLib.cli.main import main

sys.exit(main())
