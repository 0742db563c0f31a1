if __name__ == "__main__": import sys; from capsv.commands.prepare import legacy_main; sys.exit(legacy_main())  # noqa: E701,E702  (the paper's command)
