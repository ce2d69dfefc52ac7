from hopper.cli import main

raise SystemExit(main())
