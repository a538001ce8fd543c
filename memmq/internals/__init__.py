"""
Where memmq relies on details of its frameworks that they do not publish:
one module per framework, each listing at its top every private name it
touches, each pinned by a test in C{tests/test_internals.py}, so that an
upgrade that changes one fails in one place.
"""
