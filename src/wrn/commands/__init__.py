"""One module per ``wrn`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
