"""
memmq's setup: the package, plus the twistd plugin module under
twisted/plugins (a namespace shared with Twisted, so no __init__.py there).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["memmq", "memmq.*"]) + ["twisted.plugins"],
)
