"""
How the processes of one memmq server, or the nodes of one cluster, pass
messages between them: L{memmq.backplane.interface.IBackplane}.
"""
