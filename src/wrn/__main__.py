from wrn.cli import entry

entry()
