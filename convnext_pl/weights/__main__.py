from convnext_pl.weights.command import main

raise SystemExit(main())
