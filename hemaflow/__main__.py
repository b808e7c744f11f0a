from hemaflow.core.cli import main

raise SystemExit(main())
