"""CLI commands of one area; see ml4paleo.cli."""

commands: list = []
