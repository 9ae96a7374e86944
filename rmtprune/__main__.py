from rmtprune.cli import main

raise SystemExit(main())
