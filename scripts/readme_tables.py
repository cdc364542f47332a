#!/usr/bin/env python3
"""Rewrites README.md's option tables (LoadTestOptions, EvaluationOptions, SearchOptions).

Run it after adding or changing an option; tests/test_options.py fails while they differ.
"""

import sys
from pathlib import Path

from optbench.options import update_readme

readme = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "README.md"
print(f"{readme}: {'updated' if update_readme(readme) else 'up to date'}")
