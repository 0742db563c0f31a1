"""One module per ``capsv`` subcommand, each with ``add_arguments(parser)`` and ``run(args)``.

These are thin: they parse flags and call the library.
"""
