"""
The front-ends: what a memmq server serves over the network.
"""
