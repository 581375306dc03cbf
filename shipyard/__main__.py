"""`python -m shipyard`: the command line, for environments whose scripts are not on PATH."""

from shipyard.cli import app

app()
