"""
Framework details with no public equivalent, one module per framework; each
name used is listed at the top of its module and pinned by a test.
"""
