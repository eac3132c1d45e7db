from kbypass.cli import main

raise SystemExit(main())
