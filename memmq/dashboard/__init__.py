"""
The dashboard's files (index.html, dashboard.css, dashboard.js), served by
L{memmq.server.dashboard}; package data, hand-written, nothing else.
"""
