"""Stage 1, plan: the configuration, checked, resolved in the binaries (ELF symbols, USDT notes, RET
sites) and turned into ``uprobe_events`` commands."""
