"""Packaging for peewee_kvcache: every runtime dependency is declared here."""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as fh:
    LONG_DESCRIPTION = fh.read()

POSTGRES = ["psycopg2-binary>=2.9"]
MYSQL = ["pymysql>=1.0"]
EXAMPLES = ["flask>=2.2"]
# benchmarks/run.py only: the peer (django-cachalot), a hand-rolled alternative and the plot
BENCH = ["django>=4.2", "django-cachalot>=2.6", "dogpile.cache>=1.1", "matplotlib>=3.5"]

setup(
    name="peewee_kvcache",
    version="0.1.0",
    description="Query-result cache for the Peewee ORM (process memory, diskcache, Cloudflare "
    "Workers KV) with transaction-aware invalidation",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["peewee_kvcache", "peewee_kvcache.*"]),
    package_data={"peewee_kvcache": ["py.typed"]},  # PEP 561: type checkers read its hints
    python_requires=">=3.9",
    entry_points={"console_scripts": ["peewee-kvcache=peewee_kvcache.cli.main:main"]},
    install_requires=[
        "peewee>=3.17",
        "requests>=2.28",
        "urllib3>=1.26",  # imported directly: Retry, and its exception types
        "diskcache>=5.6",
        "sqlglot>=30,<31",
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
                                               "mypy>=1.0"],  # tests/test_typing.py
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Peewee",
        "License :: OSI Approved :: MIT License",
    ],
)
