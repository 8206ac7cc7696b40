from animalcls.cli.main import main

raise SystemExit(main())
