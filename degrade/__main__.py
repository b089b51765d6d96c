from degrade.cli import main

main()
