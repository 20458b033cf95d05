"""The configuration: the schema of every TOML table and stage config, and the loader that turns a file and
the command-line flags into one frozen config per stage.

The schema imports only the standard library, msgspec, :mod:`streamer.errors` and :mod:`workers.flips`, so
every layer may import its config from it: ``tables`` (each TOML table, with its bounds), ``checks`` (msgspec
does the checking; its errors as one line), ``network`` (Endpoints, Security), ``look``, ``sinks`` and
``stages`` (the stage configs, each checked when built). The loader sits above video, transport and look:
``loader`` (``load_config``), ``load_sources``, ``load_outputs``, ``load_keys`` and ``web``.
"""
