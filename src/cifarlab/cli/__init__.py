"""The ``cifarlab`` command line: every parser lives here, one module per command family, each calling down.

- ``flags``: argument types and the data flags shared by several commands;
- ``train``: ``cifarlab train`` (new runs and ``--resume``);
- ``tools``: ``evaluate``, ``predict``, ``export``, ``study``, ``benchmark``;
- ``results``: ``analyze``, ``compare``, ``report``;
- ``catalog``: ``models``, ``recipes``;
- ``sweep``: ``cifarlab sweep``;
- ``main``: the parser of all commands, and ``main`` (the console script): errors become one line.
"""
