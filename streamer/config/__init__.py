"""The configuration: the schema of every TOML table, and the loader that turns a file and the
command-line flags into one frozen config per stage."""
