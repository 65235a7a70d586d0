"""The command lines (console scripts in pyproject.toml): thin layers that parse
options, call the library and turn errors into one line and an exit code
(`common`). The top of the package: nothing imports them."""
