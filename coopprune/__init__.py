"""coopprune: layer pruning for LLMs as a cooperative game (arXiv 2602.07804)."""

__version__ = "0.1.0"
