import sys; from capsv.cli import legacy_main; sys.exit(legacy_main())  # noqa: E702  (the paper's command)
