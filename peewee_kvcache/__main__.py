"""``python -m peewee_kvcache``: the command line of ``peewee_kvcache.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
