"""CLI commands, one module each (see ``motionrep.cli.COMMAND_MODULES``)."""
