from hntseg.cli import main

main()
