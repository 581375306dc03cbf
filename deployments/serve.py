"""`python deployments/serve.py`: serve the release flow without a work pool.

Lives in the installed package, `shipyard/deployments/serve.py` (`python -m
shipyard.deployments.serve`); this file only names it.
"""

from shipyard.deployments.serve import main

if __name__ == "__main__":
    main()
