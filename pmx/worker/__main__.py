from pmx.worker.process import main

main()
