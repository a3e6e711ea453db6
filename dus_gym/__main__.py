"""``python -m dus_gym`` is the ``dus-gym`` command."""

import sys

from dus_gym.cli import main

sys.exit(main())
