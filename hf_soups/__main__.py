"""`python -m hf_soups` runs the `hf-soups` command line."""

import sys

from .cli.main import main

sys.exit(main())
