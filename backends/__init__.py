"""First-party splitdataloader plugins, installed as ``splitdataloader_backends``.

They register through the ``splitdataloader`` entry-point group exactly as a third-party
plugin would; nothing imports this package directly.
"""
