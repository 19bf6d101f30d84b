"""The package's version, written only here: setup.py reads this file as text (building the
package must not import it, which would need its dependencies) and ``peewee_kvcache`` re-exports
it as ``__version__``."""
__version__ = "0.1.0"
