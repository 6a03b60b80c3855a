from convnext_pl.export.formats import main

main()
