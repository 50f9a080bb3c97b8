import sys

from modelpress.cli import entry

sys.exit(entry())
