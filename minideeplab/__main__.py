from minideeplab.cli import main

raise SystemExit(main())
