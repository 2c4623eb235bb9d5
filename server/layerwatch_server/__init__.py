"""The layerwatch server: stores what training runs send and serves queries and plots.

The application factory is :func:`layerwatch_server.main.create_app`.
"""
