from fertrain.entrypoint import main

main()
