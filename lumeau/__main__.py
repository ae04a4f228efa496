from lumeau.cli import main

raise SystemExit(main())
