"""Print the lower-bound job's pins: every floor pyproject.toml declares, as ``name==floor``.

Covers ``[project] dependencies`` and the extras named on the command line (default: onnx,
plot), so pyproject's floors are exactly what the job installs. A dependency without a ``>=``
floor is an error: an unbounded dependency is a version nobody tested.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
extras = sys.argv[1:] or ["onnx", "plot"]
requirements = [*project["dependencies"],
                *(r for e in extras for r in project["optional-dependencies"][e])]
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)(,<.*)?", requirement)
    if not match:
        sys.exit(f"error: pyproject.toml: {requirement!r} has no '>=' floor")
    print(f"{match[1]}=={match[2]}")
