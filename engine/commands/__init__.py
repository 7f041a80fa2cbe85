"""Sub-commands of ``connectile``: one module each, with ``add_parser(subparsers)`` that sets
``func`` on its parser (``parser.set_defaults(func=run)``) and ``run(args) -> int``."""
