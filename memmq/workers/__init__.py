"""
One server made of several processes (C{--workers}): a parent that holds
the listening sockets and supervises, and workers that serve on them,
joined by the mesh backplane (L{memmq.backplane.mesh}).  README: Workers.
"""
