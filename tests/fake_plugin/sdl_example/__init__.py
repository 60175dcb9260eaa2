"""sdl-example: a bz2 codec and a ``fakemem://`` storage backend for splitdataloader."""
