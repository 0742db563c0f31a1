import sys; from capsv.commands.prepare import legacy_main; sys.exit(legacy_main())  # noqa: E702  (the paper's command)
