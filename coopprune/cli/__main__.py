"""``python -m coopprune.cli``: the same entry point as the ``coopprune`` command."""

from coopprune.cli import main

if __name__ == "__main__":
    main()
