"""`python -m uprobe_exporter` runs the command line."""

from uprobe_exporter.nativestatus import adopt_installed_build

adopt_installed_build()  # run from a clone's root: the installed build of the same code, if there is one

from uprobe_exporter.cli import main  # noqa: E402

raise SystemExit(main())
