"""`wrn bench`: PLACEHOLDER until its owner writes it."""

HELP = "(not written yet)"


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError("wrn bench")
