"""`python -m splitft.bench.methods [--markdown]`: the default run; `--worker`: one method (the
parent starts one such process per method)."""

import sys

from splitft.bench.methods.run import main

sys.exit(main())
