from pmx.cli import main

main()
