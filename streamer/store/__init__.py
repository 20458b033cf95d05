"""The action history (contract 8 in DESIGN.md): every action, one SQLite record from its start to its end.

:mod:`.schema` opens the file and upgrades it; :mod:`.writer` keeps it up to date from the dispatcher's lines
(and catches up from the event log, the source of truth, after a crash); :mod:`.queries` answers the web stage.
Standard library ``sqlite3`` only.
"""
