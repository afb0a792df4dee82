"""The ``featstore`` command line: thin Typer commands over the library."""
