"""Load test of an edge (the same as `edgesplit loadtest`; `python loadtest/run.py -h` for the options).

    python loadtest/run.py --spawn --concurrency 32 --duration-s 60
"""



from edgesplit.tools.loadtest import main

if __name__ == "__main__":
    main()
