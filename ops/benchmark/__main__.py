from ops.benchmark.main import main

raise SystemExit(main())
