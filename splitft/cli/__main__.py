"""`python -m splitft.cli` runs the `splitft` command (used to start child processes)."""

from splitft.cli import main

raise SystemExit(main())
