from mergevq.cli import main

raise SystemExit(main())
