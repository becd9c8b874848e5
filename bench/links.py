"""Every plan against the planner's choice on emulated links (the same as `edgesplit bench`; -h for options).

    python bench/links.py            # both models, LAN, Wi-Fi, LTE and a poor link; about 40 minutes
"""



from edgesplit.tools.linkbench import main

if __name__ == "__main__":
    main()
