"""Sub-commands of the `sorter` CLI, one module each."""
