"""
memmq's setup: the package, plus the twistd plugin module under
twisted/plugins (a namespace shared with Twisted, so no __init__.py there),
and the man page, installed as PREFIX/share/man/man1/memmq.1.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["memmq", "memmq.*"]) + ["twisted.plugins"],
    data_files=[("share/man/man1", ["man/memmq.1"])],
)
