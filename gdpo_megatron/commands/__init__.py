"""One module per `gdpo` subcommand; each defines `register(subparsers)`. Keep them thin:
parse arguments, call into the package, print."""
