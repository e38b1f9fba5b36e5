"""``python -m hakit.replication [CONTROL-FD]``: the replicator process (see replicator.py)."""

import sys

from hakit.replication.replicator import main

sys.exit(main())
