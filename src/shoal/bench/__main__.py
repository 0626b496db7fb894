"""`python -m shoal.bench` (what `make bench` runs): see shoal.bench.harness."""

from shoal.bench.harness import main

raise SystemExit(main())
