"""``python -m peewee_kvcache``: the command line of ``peewee_kvcache.cli.main``."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
