"""Print the pinned requirements of pyproject.toml (core plus the extras named) for pip install -r.

``--only EXTRA...`` prints the extras alone (the serving image installs ``--only serve``).
"""

import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
args = sys.argv[1:]
only = bool(args) and args[0] == "--only"
reqs = [] if only else list(project["dependencies"])
for extra in args[1:] if only else args:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
