"""Packaging for peewee_kvcache: every runtime dependency is declared here; pyproject.toml names
the build system (and configures ruff and mypy)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
LONG_DESCRIPTION = (HERE / "README.md").read_text(encoding="utf-8")
# peewee_kvcache/_version.py is the one place the version is written (read as text: building
# the package must not import it)
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "peewee_kvcache" / "_version.py").read_text(encoding="utf-8"),
                    re.M).group(1)

POSTGRES = ["psycopg2-binary>=2.9"]
MYSQL = ["pymysql>=1.0"]
EXAMPLES = ["flask>=2.2"]
# benchmarks/run.py only: the peer (django-cachalot), a hand-rolled alternative and the plot
BENCH = ["django>=4.2", "django-cachalot>=2.6", "dogpile.cache>=1.1", "matplotlib>=3.5"]

setup(
    name="peewee_kvcache",
    version=VERSION,
    description="Query-result cache for the Peewee ORM (process memory, diskcache, Cloudflare "
    "Workers KV) with transaction-aware invalidation",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    author="peewee_kvcache contributors",
    license_expression="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["peewee_kvcache", "peewee_kvcache.*"]),
    package_data={"peewee_kvcache": ["py.typed"]},  # PEP 561: type checkers read its hints
    python_requires=">=3.9",
    entry_points={"console_scripts": ["peewee-kvcache=peewee_kvcache.cli.main:main"]},
    install_requires=[
        "peewee>=3.17",
        "requests>=2.28",
        "urllib3>=1.26",  # imported directly: Retry, and its exception types
        "diskcache>=5.6",
        # sql/dialects.py subclasses sqlglot's MySQL parser and calls its private _match_text_seq,
        # and the analysis relies on how sqlglot parses (30.21 fails a test): the range is the
        # one tested, its lowest release by tox's py311-peewee3, its newest by the others
        "sqlglot>=30.22,<31",
        "msgpack>=1.0",
        "platformdirs>=3.0",
        "rich>=13",
    ],
    extras_require={
        "postgres": POSTGRES,
        "mysql": MYSQL,
        "examples": POSTGRES + EXAMPLES,
        "bench": POSTGRES + BENCH,
        "test": POSTGRES + MYSQL + EXAMPLES + ["pytest>=7", "freezegun>=1.2",
                                               "pytest-timeout>=2.1", "gunicorn>=21",
                                               "mypy>=1.0",  # tests/test_typing.py
                                               "build>=1.0", "trove-classifiers",  # test_packaging
                                               ],
    },
    classifiers=[
        "Intended Audience :: Developers",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
        "Typing :: Typed",
    ],
)
