"""``python -m harmonize.simulate``: the same as ``harmonize simulate``."""
from harmonize.cli import command_main

if __name__ == "__main__":
    raise SystemExit(command_main("simulate"))
