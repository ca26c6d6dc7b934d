"""`python -m uprobe_exporter` runs the command line."""

from uprobe_exporter.cli import main

raise SystemExit(main())
