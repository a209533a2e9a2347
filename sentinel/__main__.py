"""`python -m sentinel` is the same as the `sentinel` console script."""

from sentinel.cli import main

raise SystemExit(main())
