from convnext_pl.roadmap.cli import main

raise SystemExit(main())
