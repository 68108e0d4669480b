"""``python -m fgkd.data.synth.synthpipes``: see :mod:`fgkd.data.synth.synthpipes.cli`."""

import sys

from fgkd.data.synth.synthpipes.cli import main

sys.exit(main())
