"""``python -m nanscope`` is the ``nanscope`` command."""

from nanscope.cli import entry

if __name__ == "__main__":
    entry()
