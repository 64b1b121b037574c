"""Where coopprune keeps downloaded models and data (overridable, like HF_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``$COOPPRUNE_HOME`` or ``~/.cache/coopprune``: shared by every run on the machine."""
    env = os.environ.get("COOPPRUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coopprune"
