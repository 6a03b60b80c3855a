from convnext_pl.weights.loading import main

raise SystemExit(main())
