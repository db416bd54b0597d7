"""The ``landscape`` command from a checkout, without installing: ``python cli.py --help``.

The command's code is ``landscape/cli.py`` (installed as the ``landscape`` script and as
``python -m landscape``); this file only launches it.
"""

from landscape.cli import main

if __name__ == "__main__":
    main()
