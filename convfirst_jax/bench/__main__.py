"""``python -m convfirst_jax.bench``."""

from convfirst_jax.bench.cli import main

raise SystemExit(main())
